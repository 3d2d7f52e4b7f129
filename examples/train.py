"""Fine-tune a dsunet-hf model: ``accelerate launch examples/train.py --model sam2-unet --train-data DIR ...``,
or from a recipe file: ``accelerate launch examples/train.py examples/configs/sam2unet_cod.yaml [--flags]``.

A thin front over ``dsunet_hf.training`` (the same code as ``dsunet-hf train``); ``--help`` lists every option.
"""

import sys

from dsunet_hf.training import main

if __name__ == "__main__":
    sys.exit(main())
