"""General captions for calibrating a model outside the embedded shapes worlds, when its user gives
none: short scenes of the kinds text-to-image and text-to-video models are asked for (people,
animals, places, objects, styles), written for trdq. Calibration needs inputs like those the model
will sample; your own prompts are better where you have them.
"""

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
