"""Default-label rules and the queue of events waiting for one, without an app or a broker."""

from __future__ import annotations

import pytest

from streamlearn.core.defaults import DefaultLabels, DefaultRule, parse_rules


def test_rules_read_label_and_wait():
    assert parse_rules(" clicks-*=false@30s, score-?=0.5@500ms,views=no@2m ,x=true@1h,y=\"yes\"@5") == [
        DefaultRule("clicks-*", False, 30.0), DefaultRule("score-?", 0.5, 0.5), DefaultRule("views", "no", 120.0),
        DefaultRule("x", True, 3600.0), DefaultRule("y", "yes", 5.0)]
    assert parse_rules("") == []


@pytest.mark.parametrize("text, says", [
    ("clicks-*=false", "pattern=label@wait"), ("=false@30s", "pattern=label@wait"), ("a=@30s", "pattern=label@wait"),
    ("a=false@soon", "positive duration"), ("a=false@0s", "positive duration"), ("a=false@-3s", "positive duration"),
    ("a=null@3s", "string, a number or a boolean"), ("a=[1]@3s", "string, a number or a boolean"),
])
def test_a_wrong_rule_says_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_rules(text)


def test_the_first_matching_rule_wins_and_keys_without_one_are_not_queued():
    d = DefaultLabels(parse_rules("clicks-eu-*=true@10s,clicks-*=false@30s"))
    assert d.rule_for("clicks-eu-1").label is True and d.rule_for("clicks-us").wait == 30.0
    assert d.rule_for("other") is None
    d.waiting(0, b"other\x1fe", "other", 0.0)
    assert d.size() == 0


def test_due_hands_out_each_partitions_keys_soonest_first_and_only_once():
    d = DefaultLabels(parse_rules("slow=false@30s,fast=false@10s"))
    d.waiting(1, b"slow\x1fa", "slow", 0.0)      # due at 30
    d.waiting(1, b"fast\x1fb", "fast", 5.0)      # due at 15
    d.waiting(2, b"fast\x1fc", "fast", 0.0)      # another partition
    assert list(d.due(1, 14.9)) == []
    assert list(d.due(1, 40.0)) == [b"fast\x1fb", b"slow\x1fa"]
    assert list(d.due(1, 40.0)) == [] and d.size() == 1


def test_a_rebalance_forgets_and_asks_for_a_scan_again():
    d = DefaultLabels(parse_rules("*=false@10s"))
    d.waiting(1, b"m\x1fa", "m", 0.0)
    d.waiting(2, b"m\x1fb", "m", 0.0)
    d.scanned, generation = True, d.generation
    d.forget_partitions({2})
    assert not d.scanned and d.generation == generation + 1
    assert list(d.due(1, 99.0)) == [] and list(d.due(2, 99.0)) == [b"m\x1fb"]
    d.found(1, b"m\x1fa", "m", 0.0)
    assert list(d.due(1, 99.0)) == [b"m\x1fa"]
