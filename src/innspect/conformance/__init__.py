"""Reference data: iNNvestigate's conformance files and innspect's own (REFERENCES.md part A).

``check_folder`` reruns every file of a folder with innspect (or another implementation)
and compares each array; ``generate_model_references`` / ``generate_layer_references``
write new files in the same layout. The command line is ``innspect references``.
"""

from innspect.conformance.check import (
    Comparison,
    check_folder,
    format_table,
    innspect_implementation,
    load_implementation,
)
from innspect.conformance.files import ReferenceCase, ReferenceDataError, read_reference_file
from innspect.conformance.generate import generate_layer_references, generate_model_references

__all__ = [
    "Comparison",
    "ReferenceCase",
    "ReferenceDataError",
    "check_folder",
    "format_table",
    "generate_layer_references",
    "generate_model_references",
    "innspect_implementation",
    "load_implementation",
    "read_reference_file",
]
