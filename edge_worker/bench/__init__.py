"""``edge-worker bench``: how fast the worker is, measured the way a radiographer feels it.

* :mod:`~edge_worker.bench.inputs`: realistic radiographs (phantoms at 3000 rows, 14-16 bit,
  uncompressed and JPEG 2000 lossless), cached, and cheap unique copies of them;
* :mod:`~edge_worker.bench.packs`: the demo pack, the full-size seed pack (built once with the
  export tools) and its INT8 / FP16 variants (``edge-export quantize``, accuracy-gated);
* :mod:`~edge_worker.bench.stages`: per-stage latency in this process, and the before/after
  figures of each optimisation;
* :mod:`~edge_worker.bench.broker` and :mod:`~edge_worker.bench.worker`: the real daemon in a
  subprocess on a real broker: file closed -> verdict received, backlog, peak memory;
* :mod:`models.baseline.naive` (the ML side's, not this package's): the straightforward
  pipeline (pydicom + numpy + OpenCV + torch eager), run in a process of its own; no module of
  ``edge_worker`` imports torch;
* :mod:`~edge_worker.bench.optimise` and :mod:`~edge_worker.bench.memprobe`: before/after
  figures of each optimisation (ORT settings and cache, reduced decode, batching, parallel
  stages, the shared memory arena);
* :mod:`~edge_worker.bench.run`, :mod:`~edge_worker.bench.report`,
  :mod:`~edge_worker.bench.markdown` and :mod:`~edge_worker.bench.cli`: the command, its
  report, the targets and the tables of BENCHMARKS.md.

Importing this package does nothing; every module imports its heavy dependencies lazily.
"""
