"""Tables on disk belong to one Kafka cluster."""

from __future__ import annotations

from streamlearn.streams.stores import keep_tables_of


def test_tables_on_disk_of_another_kafka_cluster_are_removed_and_those_of_this_one_kept(tmp_path):
    tables = tmp_path / "v1" / "tables"
    (tables / "checkpoints-3.db").mkdir(parents=True)
    assert keep_tables_of("cluster-a", tmp_path, tables)           # no record yet (an older data directory): kept
    assert (tables / "checkpoints-3.db").exists()
    assert keep_tables_of("cluster-a", tmp_path, tables)           # the same cluster: kept
    assert (tables / "checkpoints-3.db").exists()
    assert not keep_tables_of("cluster-b", tmp_path, tables)       # a new cluster: its changelogs never had them
    assert not tables.exists()
    assert (tmp_path / "kafka-cluster-id").read_text() == "cluster-b\n"
    fresh = tmp_path / "fresh"
    assert keep_tables_of("cluster-b", fresh, fresh / "v1" / "tables") and (fresh / "kafka-cluster-id").exists()
