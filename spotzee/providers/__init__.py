"""Channel delivery adapters (SMTP, HTTP vendors, webhook, in-app)."""
