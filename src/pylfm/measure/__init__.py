"""Measuring the model: speed (`bench`: load, encode, prefill, decode, RTF, memory) and
accuracy (`evaluate`: WER/CER over a manifest). The library code behind ``pylfm bench``
and ``pylfm eval``; it takes any loaded `pylfm.Model`."""
