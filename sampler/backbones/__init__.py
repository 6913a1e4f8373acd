"""Backbones: one interface over the shapes model and diffusers Stable Diffusion pipelines.

    base.py              the Backbone interface and the Conditioning it encodes prompts into
    shapes.py            the shipped shapes model
    stable_diffusion.py  Stable Diffusion 1.x/2.x and SDXL pipelines
    flow.py              rectified-flow transformers: SD3.x, FLUX.1, the shapes flow model
    load.py              a backbone by name, id, folder or single .safetensors file (safetensors
                         only), or around a diffusers pipeline object; --device auto

A new model family is one more module here with a Backbone subclass, its case in
load.load_backbone, and its BackboneDefaults in energies/defaults.py.
"""

from .base import Backbone, Conditioning
from .flow import FlowBackbone, FluxBackbone, ShapesFlowBackbone, StableDiffusion3Backbone
from .load import (
    DTYPES,
    backbone_for_pipeline,
    check_device,
    direction_folders,
    flow_kind,
    load_backbone,
    load_single_file,
    load_tokenizer,
    pipeline_class,
    quiet_loading,
    refuse_pickle_only,
    resolve_device,
)
from .shapes import ShapesBackbone
from .stable_diffusion import StableDiffusionBackbone, StableDiffusionXLBackbone

__all__ = [
    "Backbone", "Conditioning", "FlowBackbone", "FluxBackbone", "ShapesFlowBackbone", "StableDiffusion3Backbone", "ShapesBackbone", "StableDiffusionBackbone", "StableDiffusionXLBackbone", "DTYPES",
    "backbone_for_pipeline", "check_device", "direction_folders", "flow_kind", "load_backbone", "load_single_file", "load_tokenizer",
    "pipeline_class", "quiet_loading", "refuse_pickle_only", "resolve_device",
]
