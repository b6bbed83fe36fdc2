# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR vertebra reconstruction bundle: data preparation, X-ray simulation, network, losses and metrics."""

import logging as _logging
import warnings as _warnings

# MONAI's LoadImage sets up its optional nvImageCodec DICOM reader each time it is built and says so on every machine
# without that GPU codec (one log line and one warning per load): the bundle reads DICOM with pydicom and ITK, so
# both say nothing a user can act on. Only these two messages are silenced.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
