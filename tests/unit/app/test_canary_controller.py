"""The canaries' controller against a fake cluster: commands, what it saves before them, a promotion whose answer
never came, and a rollback of every key (the Kafka side is tested in tests/integration/test_canary.py)."""

from __future__ import annotations

from streamlearn.app.canary import Controller
from streamlearn.app.settings import Settings
from streamlearn.core.canary import Canary


class Cluster:
    """Model keys as the cluster's list shows them, changed by the commands the controller sends."""

    def __init__(self, keys: list[str]) -> None:
        self.models = {k: {"model": k, "spec": "logreg", "challengers": [{"spec": "tree", "retired_version": None}]}
                       for k in keys}
        self.commands: list[tuple[str, str, str | None]] = []
        self.silent: set[str] = set()          # keys whose promotion runs but whose answer never comes
        self.unloaded: set[str] = set()        # keys their owner has not loaded since it started
        self.version = 10

    async def listing(self) -> list[dict]:
        """As ``GET /models`` lists them: keys in ``unloaded`` from their checkpoint only (no challengers)."""
        return [{"model": k, "spec": m["spec"], "live": False} if k in self.unloaded else dict(m)
                for k, m in self.models.items()]

    async def call(self, command: str, key: str, *, spec=None, version=None, by="", reason="", timeout=None):
        self.commands.append((command, key, spec))
        m = self.models[key]
        self.unloaded.discard(key)             # a command loads the key's model
        if command == "status":
            return {"ok": True, "error": None, "detail": "", "result": dict(m)}
        if spec == m["spec"]:
            return {"ok": False, "error": "already_champion", "detail": "", "result": None}
        old, self.version = m["spec"], self.version + 1
        m["spec"], m["challengers"] = spec, [{"spec": old, "retired_version": self.version}]
        if key in self.silent:
            return {"ok": False, "error": "timeout", "detail": "no owner answered", "result": None}
        return {"ok": True, "error": None, "detail": "", "result": {"replaced": {"version": self.version, "spec": old}}}


class Log:
    def __init__(self, *canaries: Canary) -> None:
        self.saved = {c.id: Canary.from_json(c.to_json()) for c in canaries}
        self.writes: list[dict] = []
        self.new = True

    async def follow(self) -> dict[str, Canary]:
        found, self.new = (dict(self.saved) if self.new else {}), False
        return found

    async def unfollow(self) -> None:
        self.new = True

    async def write(self, c: Canary) -> None:
        self.writes.append(c.to_json())
        self.saved[c.id] = Canary.from_json(c.to_json())


def controller(cluster: Cluster, log: Log, audit: list) -> Controller:
    settings = Settings(canary_examples=100)
    ctl = Controller(settings, log, None, cluster.listing, lambda c, action, why: audit.append(action), lambda: True)
    ctl.control = cluster          # call(command, key, ...) as the control client's
    return ctl


async def test_an_unanswered_promotion_is_adopted_and_every_key_goes_back_when_the_champions_did_better():
    cluster, audit = Cluster(["k-1", "k-2", "k-3"]), []
    cluster.silent.add("k-2")
    log = Log(Canary("c1", "tree", "k-*", [1.0]))
    ctl = controller(cluster, log, audit)
    await ctl.check()
    assert log.writes[0]["promoting"] == ["k-1", "k-2", "k-3"]             # saved before any command
    c = log.saved["c1"]
    assert sorted(c.members) == ["k-1", "k-3"] and c.promoting == ["k-2"] and c.status == "running"

    # a new controller (the first stopped), k-2's owner answering again: it adopts k-2, now on the tree
    cluster.silent.clear()
    ctl = controller(cluster, Log(c), audit)
    await ctl.check()
    c = ctl.log.saved["c1"]
    assert sorted(c.members) == ["k-1", "k-2", "k-3"] and c.promoting == [] and not c.skipped
    assert c.members["k-2"].replaced_version == 12 and [x for x in cluster.commands if x[1] == "k-2"] == [
        ("promote", "k-2", "tree")]                                         # promoted once, never again

    for m in cluster.models.values():      # the replaced champions did better on every key
        m["promotion_windows"] = {"logreg": {"examples": 100, "challenger_better": 30, "champion_better": 5}}
    await ctl.check()
    c = ctl.log.saved["c1"]
    assert c.status == "rolled_back" and audit == ["canary_rollback", "canary_rolled_back"]
    assert {m["spec"] for m in cluster.models.values()} == {"logreg"}
    assert sorted(x[1] for x in cluster.commands if x[0] == "rollback") == ["k-1", "k-2", "k-3"]
    assert {x[2] for x in cluster.commands if x[0] == "rollback"} == {"logreg"}


async def test_a_key_listed_from_its_checkpoint_only_is_asked_for_its_status_then_promoted():
    cluster, audit = Cluster(["k-1", "k-2"]), []
    cluster.unloaded.add("k-2")                 # after a restart: listed with no challengers
    log = Log(Canary("c1", "tree", "k-*", [1.0]))
    await controller(cluster, log, audit).check()
    c = log.saved["c1"]
    assert sorted(c.members) == ["k-1", "k-2"] and not c.skipped
    assert [x for x in cluster.commands if x[1] == "k-2"] == [("status", "k-2", None), ("promote", "k-2", "tree")]
