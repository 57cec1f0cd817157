"""Transforms of LPS points in micrometers: affines, displacement fields, chains of them."""

from scalereg.transforms.affine_transform import AffineTransform, read_ants_affine, write_ants_affine
from scalereg.transforms.displacement_field import DisplacementField, read_vector_field
from scalereg.transforms.grid import GridMap
from scalereg.transforms.transform_chain import TransformChain, load_transform_chain

__all__ = [
    "AffineTransform",
    "DisplacementField",
    "GridMap",
    "TransformChain",
    "load_transform_chain",
    "read_ants_affine",
    "read_vector_field",
    "write_ants_affine",
]
