"""The agents: a Faust agent per topic, each a loop of decode, decide (``streamlearn.core``), hand over.

    features --route-features--> internal.events   --predict--> predictions  (+ join state)
    feedback --route-feedback--> internal.labels   --join-----> internal.training (or parked as early)
    control  --route-control---> internal.training
                                 internal.training --learn----> the live models (examples, and commands
                                                                in order with them: see commands.py)

``loop.AgentLoop`` runs each agent's handler over its stream, a fetch at a
time, and hands each handled fetch to ``streams.commit.BatchCommit``, the one
owner of what is acked when. The handlers: ``routers`` (any partition in, the
owner's partition out), ``predict``, ``joins`` and ``learning``, in the
worker owning the key; ``live`` finds a key's live model.
"""
