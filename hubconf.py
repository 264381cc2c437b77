"""torch.hub entry points of m2u: the shipped M2UNet, loaded the way users load other models.

    import torch
    unmasker = torch.hub.load("/path/to/m2u", "m2unet", source="local")   # m2u installed (make setup)
    restored, faces = unmasker.unmask_image(rgb_uint8_photo)
    mseg, generator = torch.hub.load("/path/to/m2u", "m2unet_models", source="local")

The weights ship in the repository (inference/pretrained/m2unet-celeba-128): nothing is downloaded.
"""

dependencies = ["torch", "numpy", "cv2", "dlib", "safetensors", "m2u"]


def m2unet(device="cpu", **options):
    """The shipped model, ready to unmask photos: an `m2u.inference.unmask.Unmasker` (face detection, alignment,
    M-Seg, the CARU2-Net generator, pasting back). `device`: a name ("cpu", "cuda:1") or a torch.device;
    `options` are `UnmaskConfig` fields (e.g. detector_model; progress is off unless given)."""
    from m2u.inference.unmask import UnmaskConfig, Unmasker

    options.setdefault("progress", False)
    return Unmasker.from_files(None, None, UnmaskConfig(device=str(device), **options))


def m2unet_models(device="cpu"):
    """The shipped networks alone, in eval mode: (M-Seg, CARU2-Net generator), for aligned crops in [-1, 1].
    `device` as m2unet's: checked as every m2u command checks it."""
    from m2u.inference.restore import load_pretrained
    from m2u.training.device import resolve_device

    models = load_pretrained(device=resolve_device(str(device)))
    return models.mseg, models.generator
