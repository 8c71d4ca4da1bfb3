"""Training: AFF (fusion + compatible query nets), AMES, and the trainer plumbing they share.

AMES training lives here (``ames_trainer``, ``ames_pairs``, ``ames_config``), not in
:mod:`asymfuse.cloud.ames`: it shares this package's feature cache, crop views, schedules,
DDP and resumable state with AFF training, and keeping it out of ``cloud/ames`` leaves that
package all serving code (model, scorer, re-ranker, packed store, checkpoint I/O), which the
searcher imports without pulling in any training code (``tests/test_layering.py`` checks it).
"""
