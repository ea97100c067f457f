"""The runtimes behind ``base.Runtime``: ``embedded/`` (one process, RocksDB) and ``kafka/`` (Apache
Kafka, the API process's side; the workers' agents are in ``spotzee/agents/``); ``factory.open_runtime``
opens the one the settings name."""
