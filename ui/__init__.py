"""The Space: a thin Gradio layer over quantizer.pipeline. No quantization logic lives here."""
