"""Every op in the table says what it is, from a closed set, and admission
depends on the admission class alone."""

from sheep import proto
from sheep.server import ops
from sheep.server.op_natures import NATURE, NATURES

Op = proto.Op


def test_every_op_has_a_nature_from_the_set():
    assert set(NATURE) == set(ops.OPS)
    for code, spec in ops.OPS.items():
        assert spec.nature in NATURES, (spec.name, spec.nature)


def test_natures_say_what_the_op_does():
    nat = {op: ops.OPS[int(op)].nature for op in (
        Op.GET_VDI_INFO, Op.DISCARD_OBJ, Op.READ_PEER, Op.NEW_VDI, Op.MAKE_FS,
        Op.GET_NODE_LIST, Op.KILL_NODE, Op.TRACE_ENABLE)}
    assert nat == {
        Op.GET_VDI_INFO: "VDI query",    # admitted as a cluster op, yet only reads
        Op.DISCARD_OBJ: "object I/O",
        Op.READ_PEER: "replica I/O",
        Op.NEW_VDI: "VDI change",
        Op.MAKE_FS: "cluster change",
        Op.GET_NODE_LIST: "node query",
        Op.KILL_NODE: "node admin",
        Op.TRACE_ENABLE: "compatibility",
    }


def test_admission_class_is_unchanged_by_nature():
    # the nature is documentation; the admission class keeps 1.0's split
    assert ops.OPS[int(Op.GET_VDI_INFO)].kind == "cluster"
    assert ops.OPS[int(Op.DISCARD_OBJ)].kind == "gateway"
    kinds = {spec.kind for spec in ops.OPS.values()}
    assert kinds == {"gateway", "peer", "local", "cluster"}
    # every query nature is admitted without the total order except GET_VDI_INFO,
    # whose answer must agree with the ordered VDI table
    ordered_reads = [s.name for s in ops.OPS.values()
                     if s.nature in ("VDI query", "node query") and s.kind == "cluster"]
    assert ordered_reads == ["GET_VDI_INFO"]
