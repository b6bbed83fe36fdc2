# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Files in and out of the pipeline: reading X-ray images (:mod:`scripts.io.xray`) and full radiographs with their
geometry (:mod:`scripts.io.radiograph`), and writing a run's outputs (:mod:`scripts.io.outputs`: case folders
published atomically; :mod:`scripts.io.mesh`: surface meshes; :mod:`scripts.io.preview`: PNG previews;
:mod:`scripts.io.plot_training`: training curves).

The load and save steps are MONAI ``MapTransform``s, named by their module in the configs
(``scripts.io.xray.LoadXRayPaird``, ``scripts.io.radiograph.LoadRadiographsd``, ``scripts.io.mesh.SaveMeshd``,
``scripts.io.preview.SavePreviewd``, ``scripts.io.outputs.PublishCaseOutputsd``, ``scripts.io.outputs.CaseNamed``).
Importing the package loads none of its modules, so a reader does not load the writers, and trimesh,
scikit-image and matplotlib are imported only when a mesh or preview is written.
"""
