"""faust-streaming agents binding the processors of streams/ to Apache Kafka (the Kafka runtime)."""
