"""The Kafka engine partitions its outputs itself (record batches go to an explicit partition): a
contact's records must land exactly where the clients' default partitioners put them."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner as AioDefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import murmur2 as kafka_python_murmur2

from spotzee.runtime.kafka.partition_engine import KeyPartitioner


@given(keys=st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=50), partitions=st.integers(1, 64))
def test_a_key_lands_where_both_clients_default_partitioners_put_it(keys: list[bytes], partitions: int) -> None:
    partitioner = KeyPartitioner(limit=8)  # small: the memo is cleared along the way
    every = list(range(partitions))
    for key in keys * 2:  # the second pass is answered from the memo
        expected = AioDefaultPartitioner()(key, every, every)
        assert partitioner.partition(key, partitions) == expected
        # kafka-python's DefaultPartitioner.partition, its own murmur2 port:
        assert (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions == expected


def test_the_memo_stays_bounded() -> None:
    partitioner = KeyPartitioner(limit=100)
    for i in range(1_000):
        partitioner.partition(f"p:user-{i}".encode(), 8)
    assert len(partitioner._known) <= 100
