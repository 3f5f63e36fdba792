"""Tests never touch the network: the model hub is switched off before anything imports it."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # for `reference`
