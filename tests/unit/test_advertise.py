"""sheep.advertise: the address a sheep advertises without -y."""

import pytest

from sheep import advertise, config


@pytest.mark.quick
@pytest.mark.parametrize("argv,want", [
    (["-y", "10.1.2.3", "-b", "10.9.9.9"], "10.1.2.3"),      # -y wins
    (["-b", "10.9.9.9"], "10.9.9.9"),                          # a specific -b
    (["-b", "0.0.0.0"], "127.0.0.1"),                          # local driver: loopback
    ([], "127.0.0.1"),
    (["-c", "zmq:127.0.0.1:7100"], "127.0.0.1"),               # seed on loopback: as before
    (["-c", "zookeeper:127.0.0.1:2181/x,timeout=3"], "127.0.0.1"),
    (["-c", "zmq:10.255.255.1:7100,self=127.0.0.1:7100"], "127.0.0.1"),  # route to self=
])
def test_resolve(argv, want):
    cfg = config.parse([*argv, "/tmp/x"])
    assert cfg.myaddr_auto == ("-y" not in argv)
    got = advertise.resolve(None if cfg.myaddr_auto else cfg.myaddr, cfg.bindaddr, cfg.cluster)
    assert got == want


@pytest.mark.quick
def test_endpoint_of_each_driver():
    assert advertise.driver_endpoint("local:/tmp/c") is None
    assert advertise.driver_endpoint("zmq:10.0.0.1:7100,10.0.0.2:7100") == ("10.0.0.1", 7100)
    assert advertise.driver_endpoint("zookeeper:10.0.0.10:2181,10.0.0.11:2181/c") == \
        ("10.0.0.10", 2181)
    assert advertise.driver_endpoint("zmq:10.0.0.1:7100,self=10.0.0.4:7100") == \
        ("10.0.0.4", 7100)
    assert advertise.driver_endpoint("zookeeper:bad") is None  # config reports it later
    assert advertise.route_source("no-such-host.invalid", 1) is None
