"""Which pydicom decoder plugin decodes the two compressed kinds most chest films arrive in, and a threaded one.

pydicom tries its plugins in a fixed order (gdcm, pylibjpeg, ...). For the two codecs that dominate the time it
takes a compressed DICOM to reach the screen, faster ones are installed and asked for by name:

* **JPEG-LS** -> CharLS through ``pyjpegls`` (pydicom's own ``pyjpegls`` plugin): 0.09 s against libjpeg's 0.41 s
  for a 1,955 x 1,841 film, bit-identical output (``tests/test_dicom_codecs.py``).
* **JPEG 2000** -> OpenJPEG through ``imagecodecs`` with a thread per core (the plugin below): pylibjpeg-openjpeg
  runs OpenJPEG on one thread whatever ``OPJ_NUM_THREADS`` says; with two threads a 2,128 x 2,000 lossless film
  decodes in 0.33 s against 0.60 s, bit-identical.

Both are plain pydicom plugins, so pydicom still does everything around the codec (frame extraction, pixel
representation, photometric interpretation, planar configuration). Where a preferred plugin is not installed the
reader falls back to pydicom's own order, so an installation without them decodes the same films, more slowly.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydicom import uid

# pydicom's plugin protocol: the module says which UIDs it decodes and what it needs.
DECODER_DEPENDENCIES = {
    uid.JPEG2000Lossless: ("numpy", "imagecodecs"),
    uid.JPEG2000: ("numpy", "imagecodecs"),
}
IMAGECODECS = "imagecodecs"
PYJPEGLS = "pyjpegls"
# Transfer syntax -> the plugin asked for by name (one home for the choice).
PREFERRED_PLUGIN = {
    uid.JPEG2000Lossless: IMAGECODECS,
    uid.JPEG2000: IMAGECODECS,
    uid.JPEGLSLossless: PYJPEGLS,
    uid.JPEGLSNearLossless: PYJPEGLS,
}
# More threads than this buys little for one film and takes cores from other readers' analyses.
MAX_DECODE_THREADS = 4

_registered = False
_lock = threading.Lock()


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin protocol: whether imagecodecs can decode this transfer syntax here."""
    if transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(imagecodecs, "JPEG2K", None) and imagecodecs.JPEG2K.available)


def decode_threads() -> int:
    """Threads for one JPEG 2000 decode: the machine's cores, at most :data:`MAX_DECODE_THREADS`."""
    return max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """pydicom's plugin protocol: one JPEG 2000 frame -> its pixel bytes, as pylibjpeg's plugin returns them."""
    import imagecodecs
    from pydicom.pixels.common import PhotometricInterpretation

    frame = imagecodecs.jpeg2k_decode(src, numthreads=decode_threads())
    # OpenJPEG undoes the multiple-component transform itself, as in pylibjpeg's plugin: the result is RGB.
    if runner.photometric_interpretation in (PhotometricInterpretation.YBR_ICT, PhotometricInterpretation.YBR_RCT):
        runner.set_option("photometric_interpretation", PhotometricInterpretation.RGB)
    if frame.ndim == 3:
        runner.set_option("planar_configuration", 0)  # imagecodecs returns colour by pixel
    # The container follows the codestream's precision, not Bits Allocated (pydicom then applies Bits Stored).
    runner.set_option("bits_allocated", 8 * frame.dtype.itemsize)
    return frame.tobytes()


def _register() -> None:
    """Add the imagecodecs plugin to pydicom's JPEG 2000 decoders, once (``add_plugin`` is not thread-safe)."""
    global _registered
    with _lock:
        if _registered:
            return
        from pydicom.pixels.decoders.base import JPEG2000Decoder, JPEG2000LosslessDecoder

        for decoder in (JPEG2000LosslessDecoder, JPEG2000Decoder):
            try:
                decoder.add_plugin(IMAGECODECS, (__name__, "_decode_frame"))
            except ValueError:  # already there (added by another copy of this module, e.g. a reload)
                pass
        _registered = True


def warm() -> None:
    """Import pydicom's pixel decoders and the faster codecs, and register the plugin, ahead of the first file.

    About 0.4 s of imports that the first compressed DICOM of a process would otherwise wait for (the dashboard
    calls this from its background warm-up thread).
    """
    for syntax in PREFERRED_PLUGIN:
        plugin_for(syntax)


def plugin_for(transfer_syntax: str) -> str:
    """The pydicom decoding plugin to ask for by name, or ``""`` for pydicom's own order of plugins."""
    preferred = PREFERRED_PLUGIN.get(transfer_syntax, "")
    if not preferred:
        return ""
    _register()
    from pydicom.pixels import get_decoder

    return preferred if preferred in get_decoder(transfer_syntax).available_plugins else ""
