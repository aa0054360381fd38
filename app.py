"""Space entry point: build the UI and launch it. All logic lives in quantizer/ and ui/."""

import spaces  # noqa: F401 - on ZeroGPU, spaces must be imported before torch touches CUDA

from ui.app import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
