"""Putting a trained run to work outside fitloop: export (ONNX, torch.export) and serving (HTTP)."""
