"""One module per command's stage: read the run directory, call the array-level core, write outputs and manifest.

``noise``, ``crossval``, ``prune``, ``theory``, ``train``, ``report``, ``review``, ``apply``, ``predict``
(with ``evaluate``) and ``pipeline`` (``cleanpipe run``); see docs/architecture.md.
"""
