// The DOM extraction: one page.evaluate (Renderer._visit) reads everything the design metrics
// need. The expression is an async function of the block limit, returning text blocks, images,
// sections, title, page height and page background. It freezes animations first, so the
// screenshot taken right after matches what was measured. The Selenium reference in
// bench/bench_frontend_render.py runs the same file.
async (maxBlocks) => {
  const freeze = document.createElement('style');
  freeze.textContent = '*,*::before,*::after{animation:none!important;transition:none!important;' +
    'caret-color:transparent!important;scroll-behavior:auto!important}';
  (document.head || document.documentElement || document).appendChild(freeze);
  if (document.fonts) { await document.fonts.ready; }

  const styles = new Map();
  const style = (el) => { let s = styles.get(el); if (!s) { s = getComputedStyle(el); styles.set(el, s); } return s; };
  // CSS background images do not hold the load event: wait for them as well (they come from
  // the proxy or the cache at once), so that the screenshot never races them.
  const backgroundUrls = new Set();
  let scanned = 0;
  for (const el of document.getElementsByTagName('*')) {
    if (++scanned > 5000 || backgroundUrls.size >= 50) break;
    const image = style(el).backgroundImage;
    if (image && image !== 'none') {
      for (const m of image.matchAll(/url\("([^"]*)"\)/g)) backgroundUrls.add(m[1]);
    }
  }
  await Promise.all([...backgroundUrls].map((src) => {  // decoded, not just loaded: painted at once
    const img = new Image();
    img.src = src;
    return img.decode().catch(() => null);
  }));

  const canvas = document.createElement('canvas').getContext('2d', {willReadFrequently: true});
  const colours = new Map();
  const rgba = (value) => {
    if (colours.has(value)) return colours.get(value);
    let out = null;
    const m = /^rgba?\(\s*([\d.]+)[\s,]+([\d.]+)[\s,]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)$/.exec(value);
    if (m) {
      let a = m[4] === undefined ? 1 : m[4].endsWith('%') ? parseFloat(m[4]) / 100 : parseFloat(m[4]);
      out = [Math.round(+m[1]), Math.round(+m[2]), Math.round(+m[3]), a];
    } else {  // other colour syntaxes (oklch, color(), ...): let the canvas convert them
      canvas.clearRect(0, 0, 1, 1); canvas.fillStyle = '#000'; canvas.fillStyle = value;
      canvas.fillRect(0, 0, 1, 1);
      const d = canvas.getImageData(0, 0, 1, 1).data;
      out = [d[0], d[1], d[2], d[3] / 255];
    }
    colours.set(value, out);
    return out;
  };
  const backgrounds = new Map();
  const background = (el) => {  // the first opaque-ish background at or above el
    const chain = [];
    let found = null;
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      if (backgrounds.has(e)) { found = backgrounds.get(e); break; }
      chain.push(e);
      const c = rgba(style(e).backgroundColor);
      if (c[3] > 0.5) { found = c.slice(0, 3); break; }
    }
    if (!found) found = [255, 255, 255];
    for (const e of chain) backgrounds.set(e, found);
    return found;
  };
  const sx = window.scrollX, sy = window.scrollY;
  const box = (r) => [r.left + sx, r.top + sy, r.width, r.height];
  const visible = (el) => {
    const s = style(el);
    return s.visibility !== 'hidden' && s.visibility !== 'collapse' && parseFloat(s.opacity) > 0.01;
  };
  const isBlockish = (el) => { const d = style(el).display; return d !== 'inline' && d !== 'contents'; };

  // Text blocks: text nodes grouped by their nearest non-inline ancestor.
  const groups = new Map();
  const order = [];
  const root = document.body || document.documentElement;
  let truncated = false;
  if (root) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: (n) => /\S/.test(n.data) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT,
    });
    const range = document.createRange();
    let node;
    while ((node = walker.nextNode())) {
      const parent = node.parentElement;
      if (!parent || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'TITLE'].includes(parent.tagName)) continue;
      if (!visible(parent)) continue;
      range.selectNodeContents(node);
      const r = range.getBoundingClientRect();
      if (r.width < 1 || r.height < 1) continue;
      let container = parent;
      while (container.parentElement && !isBlockish(container)) container = container.parentElement;
      let g = groups.get(container);
      if (!g) {
        if (order.length >= maxBlocks) { truncated = true; break; }
        g = {el: container, parts: [], rect: null, styleEl: parent, chars: 0};
        groups.set(container, g);
        order.push(g);
      }
      const text = node.data.replace(/\s+/g, ' ');
      g.parts.push(text);
      const b = box(r);
      if (!g.rect) g.rect = b;
      else {
        const x1 = Math.min(g.rect[0], b[0]), y1 = Math.min(g.rect[1], b[1]);
        const x2 = Math.max(g.rect[0] + g.rect[2], b[0] + b[2]), y2 = Math.max(g.rect[1] + g.rect[3], b[1] + b[3]);
        g.rect = [x1, y1, x2 - x1, y2 - y1];
      }
      if (text.trim().length > g.chars) { g.chars = text.trim().length; g.styleEl = parent; }
    }
    // Form fields show text that is not in a text node.
    for (const el of root.querySelectorAll('input, textarea')) {
      if (order.length >= maxBlocks) { truncated = true; break; }
      const type = (el.getAttribute('type') || 'text').toLowerCase();
      if (['hidden', 'checkbox', 'radio', 'range', 'color', 'file', 'image'].includes(type)) continue;
      const text = (el.value || el.getAttribute('placeholder') || '').replace(/\s+/g, ' ').trim();
      const r = el.getBoundingClientRect();
      if (!text || r.width < 1 || r.height < 1 || !visible(el)) continue;
      order.push({el, parts: [text], rect: box(r), styleEl: el, chars: text.length});
    }
  }
  const blocks = [];
  for (const g of order) {
    const text = g.parts.join('').replace(/\s+/g, ' ').trim();
    if (!text) continue;
    const s = style(g.styleEl);
    blocks.push({
      text, x: g.rect[0], y: g.rect[1], width: g.rect[2], height: g.rect[3],
      color: rgba(s.color).slice(0, 3), background: background(g.styleEl),
      font_size: parseFloat(s.fontSize) || 16, font_weight: parseInt(s.fontWeight, 10) || 400,
      tag: g.el.tagName.toLowerCase(),
    });
  }

  const images = [];
  if (root) {
    for (const el of root.querySelectorAll('img, svg, video, iframe, canvas, picture')) {
      if (images.length >= 300) break;
      if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
      const r = el.getBoundingClientRect();
      if (r.width < 2 || r.height < 2 || !visible(el)) continue;
      const tag = el.tagName.toLowerCase();
      images.push({
        tag, x: r.left + sx, y: r.top + sy, width: r.width, height: r.height,
        src: (el.currentSrc || el.getAttribute('src') || '').slice(0, 300),
        alt: (el.getAttribute('alt') || el.getAttribute('aria-label') || '').slice(0, 200),
        loaded: tag !== 'img' || (el.complete && el.naturalWidth > 0),
      });
    }
  }

  const sections = [];
  if (document.body) {
    const seen = new Set();
    const landmarks = [...document.body.querySelectorAll('header, nav, main, section, footer, aside, form, article')];
    for (const el of [...document.body.children, ...landmarks]) {
      if (seen.has(el) || sections.length >= 150) continue;
      seen.add(el);
      if (['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'LINK', 'META'].includes(el.tagName)) continue;
      const r = el.getBoundingClientRect();
      if (r.width < 2 || r.height < 2 || !visible(el)) continue;
      let depth = 0;
      for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) depth++;
      sections.push({
        tag: el.tagName.toLowerCase(), x: r.left + sx, y: r.top + sy, width: r.width, height: r.height,
        background: background(el), depth,
        text: (el.innerText || '').replace(/\s+/g, ' ').trim().slice(0, 120),
      });
    }
  }

  const de = document.documentElement;
  const height = Math.max(de ? de.scrollHeight : 0, document.body ? document.body.scrollHeight : 0, window.innerHeight);
  return {
    blocks, images, sections, truncated,
    title: document.title || '',
    page_height: Math.ceil(height),
    background: document.body ? background(document.body) : [255, 255, 255],
  };
}
