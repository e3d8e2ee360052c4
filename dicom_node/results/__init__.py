"""DICOM result objects built from one processed CT series: SEG, TID 1500 SR and a summary image.

One module per idea:

- ``analysis``: reconstructed series -> predictor -> quantification -> lobe map and findings;
- ``findings``: the numbers reported (and their JSON form);
- ``source``: the sanitised source headers in volume order; ``sanitize``: the repairs;
  ``functional_groups``: frame positions and shared groups of a multi-frame source;
- ``codes``: every coded concept, checked against pydicom's dictionary;
- ``uids``: deterministic UIDs and series numbers; ``stamp``: one creation time per result set;
- ``seg``, ``sr``, ``summary``: the three objects; ``colours``, ``equipment``: what they share;
- ``build``: all objects of one series, written to one folder;
- ``records``: the pipeline's tables (``jobs``, ``results``) and folders under ``data_dir``.
"""
