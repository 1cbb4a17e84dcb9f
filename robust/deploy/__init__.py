"""Deployment: ONNX and TorchScript files of a model, verified against the original."""

from robust.deploy.export import FILES, FORMATS, export_model, load_exported, verify_export

__all__ = ["FILES", "FORMATS", "export_model", "load_exported", "verify_export"]
