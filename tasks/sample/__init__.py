"""Sample data: a drop zone of synthetic patients with real DICOM pixels and generated slides.

The public face of the wing; ``generate`` writes the batches from ``identities`` (patients and
their DICOM headers) and ``slides`` (generated whole-slide images).
"""

from tasks.sample.generate import generate_sample_data

__all__ = [
    "generate_sample_data",
]
