"""DICOM result objects built from one processed CT series: SEG, TID 1500 SR and a summary image.

One module per idea: ``codes`` (every coded concept, checked against pydicom's dictionary),
``uids`` (deterministic UIDs and series numbers), ``sanitize`` (repairs of what is inherited from
the source), ``source`` (the source headers in volume order), ``findings`` (the numbers reported),
``seg``, ``sr``, ``summary`` (the three objects) and ``build`` (all of them for one series).
"""
