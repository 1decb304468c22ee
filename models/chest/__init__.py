"""The chest pack: AP/PA view and orientation trained on real chest radiographs.

``python -m models.chest.make_chest_pack --data ../shared/data/training/chest-views
--out models/packs/chest-views`` builds ``models/packs/chest-views`` end to end:

* :mod:`models.chest.data`: the labelled set, the patient-level split, the working images;
* :mod:`models.chest.augment`: shortcut-breaking augmentations and the rotation renderer;
* :mod:`models.chest.outliers`: non-chest inputs for outlier exposure;
* :mod:`models.chest.train`: the two training loops (view, orientation);
* :mod:`models.chest.pack`: export through the parity gate and the pack writer;
* :mod:`models.chest.evaluate`: pack figures through ONNX Runtime (no torch);
* :mod:`models.chest.shortcuts`: the text/border/aspect shortcut check;
* :mod:`models.chest.ood`: what the pack says about images that are not frontal chests.
"""
