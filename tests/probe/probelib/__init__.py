"""Helpers of the probe tier (tests/probe): self-describing blocks and the
writer's model (``block``), the writer process (``writer``), clusters of
real daemons that can be killed, stopped and partitioned (``cluster``,
``netns``, ``zkproxy``), and the end-of-probe verification (``verify``)."""
