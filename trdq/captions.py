"""General captions for calibrating a model outside the embedded shapes worlds, when its user gives
none: short scenes of the kinds text-to-image and text-to-video models are asked for (people,
animals, places, objects, styles), written for trdq. Calibration needs inputs like those the model
will sample; your own prompts are better where you have them: :func:`read_captions` reads them
from a text file.
"""

from pathlib import Path

GENERAL_CAPTIONS = (
    "a red fox resting in the snow at dawn",
    "a bowl of ramen on a wooden table, steam rising",
    "an astronaut riding a horse on the moon, digital art",
    "a lighthouse on a rocky coast during a storm",
    "portrait of an old fisherman with a grey beard, soft light",
    "a street market in the rain at night, neon reflections",
    "a watercolor painting of a mountain lake in autumn",
    "a small robot watering plants on a balcony",
    "a golden retriever puppy playing with a ball on the grass",
    "a modern living room with large windows and a green sofa",
    "a sailboat on a calm sea at sunset, wide shot",
    "a close-up of a butterfly on a purple flower",
    "a city skyline at night with a full moon, cinematic",
    "a cup of coffee next to an open book by the window",
    "a train crossing a stone bridge in a green valley",
    "a cartoon cat wearing a wizard hat, flat illustration",
)


def general_captions(count: int) -> list[str]:
    """``count`` captions from :data:`GENERAL_CAPTIONS`, repeating them when more are asked."""
    return [GENERAL_CAPTIONS[i % len(GENERAL_CAPTIONS)] for i in range(count)]


#: A prompts file larger than this is refused before it is read (200 captions take about 8 KB).
MAX_PROMPTS_FILE_BYTES = 1 << 20


def read_captions(path: str | Path, minimum: int = 1) -> list[tuple[int, str]]:
    """(line number, caption) of a UTF-8 text file with one caption per line (a byte-order mark
    and CRLF line ends are fine; blank lines and ``#`` comments are skipped).

    Raises:
        ValueError: for a file over :data:`MAX_PROMPTS_FILE_BYTES`, one that is not UTF-8 text, or
            fewer than ``minimum`` captions.
    """
    path = Path(path)
    if (size := path.stat().st_size) > MAX_PROMPTS_FILE_BYTES:
        raise ValueError(f"{path} is {size:,} bytes; a prompts file may hold at most {MAX_PROMPTS_FILE_BYTES:,} "
                         "(one short caption per line)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        text, where = None, f"byte {err.start}: {err.reason}"
    if text is None or "\0" in text:
        where = where if text is None else f"a NUL at character {text.index(chr(0))}"
        raise ValueError(f"{path} is not UTF-8 text ({where}); write one caption per line in a text editor")
    captions = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.strip().startswith("#")]
    if len(captions) < minimum:
        raise ValueError(f"{path} holds {len(captions)} caption(s); at least {minimum} needed (one per line)")
    return captions
