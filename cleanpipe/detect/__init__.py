"""Label-error detection: confident learning through cleanlab (``confident``) and INCV (``incv``)."""
