"""Which variables each signature of a SavedModel reads, and how.

A resource variable read by ``ResourceGather`` (``tf.gather`` on the variable) is switched to
copy-on-read mode for the life of the process; from then on every dense read of it
(``ReadVariableOp``) copies the whole tensor. At 3.9M items that turned a 31 MB id table into a
2.6 ms copy on every request. A SavedModel where one signature gathers from a variable that a
signature reads densely pays that copy once TF Serving's warm-up (or any request) has run the
gathering one: :func:`copy_on_read_hazards` lists those variables.

The analysis follows resource handles from the main graph's ``VarHandleOp`` nodes through
function calls (``StatefulPartitionedCall``, ``PartitionedCall``), loops (``While``) and
branches (``If``, ``Case``) into every function of the library; the main graph's own reads
(the saver's) are not a signature's and are left out.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["read_saved_model", "variable_reads", "copy_on_read_hazards"]

_GATHERS = frozenset({"ResourceGather", "ResourceGatherNd"})


def read_saved_model(version_dir: str):
    """The version's ``saved_model.pb`` as a ``SavedModel`` proto."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(f"{version_dir}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    return sm


def _grow(bindings, key, found) -> bool:
    """Adds the variables ``found`` to ``bindings[key]``; True when that added any."""
    if found - bindings[key]:
        bindings[key] |= found
        return True
    return False


def _callees(node) -> list[tuple[str, int]]:
    """(function name, offset) per function a node calls: its input ``i`` is the callee's
    argument ``i - offset``."""
    a = node.attr
    if node.op in ("StatefulPartitionedCall", "PartitionedCall"):
        return [(a["f"].func.name, 0)]
    if node.op in ("While", "StatelessWhile"):
        return [(a["body"].func.name, 0), (a["cond"].func.name, 0)]
    if node.op in ("If", "StatelessIf"):
        return [(a["then_branch"].func.name, 1), (a["else_branch"].func.name, 1)]
    if node.op in ("Case", "StatelessCase"):
        return [(f.name, 1) for f in a["branches"].list.func]
    return []


def _bind(node, functions, lookup, bindings) -> bool:
    """Propagates the variables behind ``node``'s inputs to its callees' arguments; True when
    a binding grew."""
    grew = False
    for fname, offset in _callees(node):
        fn = functions.get(fname)
        if fn is None:
            continue
        for i, name in enumerate(node.input):
            if i < offset or name.startswith("^") or i - offset >= len(fn.signature.input_arg):
                continue
            key = (fname, fn.signature.input_arg[i - offset].name)
            grew |= _grow(bindings, key, lookup(name.split(":")[0]))
    return grew


def variable_reads(version_dir: str) -> dict[str, dict[str, set[str]]]:
    """``{variable: {"gather": signatures, "dense": signatures, "other": op types}}`` for every
    variable a signature's functions read (``other``: any other op given the handle, e.g. the
    op library's ``NannGatherRows``)."""
    mg = read_saved_model(version_dir).meta_graphs[0]
    graph = mg.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    handles = {n.name: n.attr["shared_name"].s.decode() or n.name
               for n in graph.node if n.op == "VarHandleOp"}
    signature_of = {t.name.split(":")[0]: name for name, sd in mg.signature_def.items()
                    for t in sd.outputs.values()}
    bindings: dict[tuple[str, str], set] = defaultdict(set)
    for node in graph.node:
        sig = signature_of.get(node.name)
        if sig is not None:
            _bind(node, functions, lambda n, s=sig: ({(handles[n], s)} if n in handles
                                                     else set()), bindings)
    grew = True
    while grew:
        grew = False
        for fname, fn in functions.items():
            lookup = lambda n, f=fname: bindings.get((f, n), set())  # noqa: E731
            for node in fn.node_def:
                grew |= _bind(node, functions, lookup, bindings)
                if node.op == "Identity" and node.input:  # a handle passed on
                    grew |= _grow(bindings, (fname, node.name),
                                  lookup(node.input[0].split(":")[0]))
    reads: dict[str, dict[str, set[str]]] = defaultdict(
        lambda: {"gather": set(), "dense": set(), "other": set()})
    for fname, fn in functions.items():
        for node in fn.node_def:
            if not node.input:
                continue
            for var, sig in bindings.get((fname, node.input[0].split(":")[0]), ()):
                if node.op in _GATHERS:
                    reads[var]["gather"].add(sig)
                elif node.op == "ReadVariableOp":
                    reads[var]["dense"].add(sig)
                elif node.op not in ("Identity", "VarIsInitializedOp"):
                    reads[var]["other"].add(node.op)
    return dict(reads)


def copy_on_read_hazards(version_dir: str) -> dict[str, dict[str, list[str]]]:
    """Variables that one signature gathers from (ResourceGather) and one reads densely:
    ``{variable: {"gathered_by": [...], "read_densely_by": [...]}}``; empty when none."""
    return {var: {"gathered_by": sorted(r["gather"]), "read_densely_by": sorted(r["dense"])}
            for var, r in sorted(variable_reads(version_dir).items())
            if r["gather"] and r["dense"]}
