"""Third-party notices mlrun hides (mlrun/notices.py) are hidden where the library emits them, and only those."""

from __future__ import annotations

import logging

import pytest

from mlrun.notices import hide_third_party_notices


@pytest.fixture
def hidden():
    """hide_third_party_notices() for one test; the loggers' filters are restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("onnxscript.optimizer._constant_folding", None)]
    saved = [list(logger.filters) for logger in loggers]
    hide_third_party_notices()
    yield
    for logger, filters in zip(loggers, saved):
        logger.filters = filters


def test_onnxscript_constant_folding_failures_are_hidden_and_its_other_warnings_kept(hidden, caplog, monkeypatch):
    """The exporter's optimizer logs 'Evaluation failed' for a Reshape numpy cannot fold (seen exporting a
    LoRA BERT to ONNX): a notice a user cannot act on; the graph keeps the node."""
    monkeypatch.delenv("MLRUN_DEBUG", raising=False)
    pytest.importorskip("onnx")
    optimizer = pytest.importorskip("onnxscript.optimizer")
    from onnx import TensorProto, helper

    data = helper.make_tensor("d", TensorProto.FLOAT, [1], [1.0])
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [1, 72])  # one value cannot take shape (1, 72)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["d", "s"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 72])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 72])],
        initializer=[data, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with caplog.at_level(logging.WARNING):
        optimizer.optimize(model)
        logging.getLogger("onnxscript.optimizer._constant_folding").warning("Some other warning")
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Evaluation failed" in m], messages
    assert "Some other warning" in messages  # the library's other warnings still show


def test_the_profilers_native_notices_are_hidden_and_other_native_lines_kept(capfd, monkeypatch):
    """Kineto's trace points and the allocator's note reach file descriptor 2 past any logger; the block's
    other lines on that descriptor come back in order after it."""
    import os

    from mlrun.notices import native_notices_hidden

    monkeypatch.delenv("MLRUN_DEBUG", raising=False)
    with native_notices_hidden():
        os.write(2, b"USDT:2026-12-07 14:55:52 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a C library's own error\n")
        os.write(
            2, b"[W1207 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the profiling started\n"
        )
        os.write(2, b"and its second line\n")
    assert capfd.readouterr().err == "a C library's own error\nand its second line\n"
