"""Colour science for the design metrics and the simulated human's descriptions: sRGB to CIE Lab,
CIEDE2000 differences, and everyday colour names."""

from __future__ import annotations

import math
from collections.abc import Sequence


def srgb_to_lab(rgb: Sequence[float]) -> tuple[float, float, float]:
    """CIE L*a*b* (D65 white, sRGB's own) of an 8-bit sRGB colour."""

    def linear(channel: float) -> float:
        c = channel / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def ciede2000(lab1: Sequence[float], lab2: Sequence[float]) -> float:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), with kL = kC = kH = 1."""
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if (a1p or b1) else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if (a2p or b2) else 0.0

    delta_l = l2 - l1
    delta_c = c2p - c1p
    if c1p * c2p == 0:
        delta_h_angle = 0.0
    else:
        delta_h_angle = h2p - h1p
        if delta_h_angle > 180:
            delta_h_angle -= 360
        elif delta_h_angle < -180:
            delta_h_angle += 360
    delta_h = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(delta_h_angle / 2))

    l_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_mean = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_mean = (h1p + h2p) / 2
    elif h1p + h2p < 360:
        h_mean = (h1p + h2p + 360) / 2
    else:
        h_mean = (h1p + h2p - 360) / 2

    t = (
        1
        - 0.17 * math.cos(math.radians(h_mean - 30))
        + 0.24 * math.cos(math.radians(2 * h_mean))
        + 0.32 * math.cos(math.radians(3 * h_mean + 6))
        - 0.20 * math.cos(math.radians(4 * h_mean - 63))
    )
    delta_theta = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * math.sqrt(cp_mean**7 / (cp_mean**7 + 25**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -math.sin(math.radians(2 * delta_theta)) * r_c
    dl, dc, dh = delta_l / s_l, delta_c / s_c, delta_h / s_h
    return math.sqrt(max(0.0, dl * dl + dc * dc + dh * dh + r_t * dc * dh))


def color_difference(rgb1: Sequence[int], rgb2: Sequence[int]) -> float:
    """CIEDE2000 between two 8-bit sRGB colours."""
    return ciede2000(srgb_to_lab(rgb1), srgb_to_lab(rgb2))


def color_similarity(rgb1: Sequence[int], rgb2: Sequence[int]) -> float:
    """Design2Code's text-colour score: 1 - CIEDE2000/100, floored at 0."""
    return max(0.0, 1.0 - color_difference(rgb1, rgb2) / 100.0)


_COLOR_NAMES = {
    "white": (255, 255, 255),
    "light gray": (229, 231, 235),
    "gray": (156, 163, 175),
    "dark gray": (75, 85, 99),
    "near-black": (31, 41, 55),
    "black": (0, 0, 0),
    "red": (239, 68, 68),
    "dark red": (153, 27, 27),
    "light red": (254, 202, 202),
    "orange": (249, 115, 22),
    "yellow": (250, 204, 21),
    "light yellow": (254, 243, 199),
    "green": (34, 197, 94),
    "dark green": (22, 101, 52),
    "light green": (209, 250, 229),
    "teal": (20, 184, 166),
    "light blue": (191, 219, 254),
    "blue": (59, 130, 246),
    "dark blue": (30, 58, 138),
    "indigo": (99, 102, 241),
    "purple": (147, 51, 234),
    "light purple": (233, 213, 255),
    "pink": (236, 72, 153),
    "light pink": (252, 231, 243),
    "brown": (120, 72, 40),
    "beige": (245, 235, 210),
}
_COLOR_NAME_LABS = {name: srgb_to_lab(rgb) for name, rgb in _COLOR_NAMES.items()}


def describe_color(rgb: Sequence[int]) -> str:
    """E.g. 'dark blue (#1e3a8a)': the nearest everyday colour name plus the exact hex."""
    lab = srgb_to_lab(rgb)
    name = min(_COLOR_NAME_LABS, key=lambda n: ciede2000(lab, _COLOR_NAME_LABS[n]))
    return f"{name} (#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x})"
