"""What the pipeline decides, with no Kafka in it.

Pure functions and small classes with typed values: given what arrived and
the state as it is, each returns an outcome for the shell
(``streamlearn.streams``) to carry out. Nothing here imports Faust, aiokafka
or Kafka, or does I/O; of streamlearn, only ``streamlearn.models`` (River).
Clocks are passed in (the schedules default to ``time.monotonic``). ``tests/unit/core`` holds their table-driven tests and
the check that the package stays so.
"""
