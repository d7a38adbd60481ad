"""Routing hash, settings, and the bounded join tables (no broker)."""

from __future__ import annotations


from aiokafka.partitioner import DefaultPartitioner

from streamlearn.streams.routing import is_tick, origin_header, origin_of, partition_for


def test_partition_for_is_kafkas_default_partitioner():
    # Kafka's Java Utils.murmur2 test vectors (toPositive(h) % n with large n shows the raw hash)
    for key, java_hash in [("21", -973932308), ("foobar", -790332482), ("abc", 479470107),
                           ("a-little-bit-long-string", -985981536)]:
        assert partition_for(key, 2**31 - 1) == (java_hash & 0x7FFFFFFF) % (2**31 - 1)
    parts = list(range(8))
    for key in ["tenant-7", "k", "é-unicode"]:
        assert partition_for(key, 8) == DefaultPartitioner()(key.encode(), parts, parts)


def test_origin_and_tick_headers():
    name, value = origin_header("streamlearn.features", 3, 42)
    assert origin_of([(name, value)], "internal", 0, 0) == ("streamlearn.features", 3, 42)
    assert origin_of([], "internal", 1, 7) == ("internal", 1, 7)
    assert not is_tick([(name, value)]) and is_tick([("streamlearn-tick", b"1")])


