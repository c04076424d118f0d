"""pytest's root for the tests: keeps this folder on ``sys.path`` so that ``support`` and ``dinov3_files`` import.

* ``tests/unit``: the components that need no nnU-Net dataset or trainer (a few compare against nnU-Net's own
  loss functions); seconds in all.
* ``tests/integration``: nnU-Net's commands, trainers and datasets (its conftest sets nnU-Net's variables).
"""
