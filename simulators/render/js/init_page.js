// Added to every render context (Renderer._new_slot); runs before any page script.
// Math.random is seeded so that the same HTML gives the same pixels, and window.open is
// disabled so that a page cannot open windows (one that still opens is closed on sight).
(() => {
  let seed = 0x2f6b1c3d;
  Math.random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  window.open = () => null;
})();
