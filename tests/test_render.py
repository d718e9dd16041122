"""The renderer against a real headless Chromium: offline assets, determinism, hostile pages.

Needs the Tailwind files in ``$COLLAB_HOME/web`` (``scripts/fetch_web_assets.sh``, run by setup).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from simulators.paths import web_dir
from simulators.render import (
    MAX_BLOCKS,
    TAILWIND_V2_FILE,
    Renderer,
    TailwindSubset,
    asset_warnings,
    is_static_html,
    placeholder_png,
)
from simulators.render.page_scripts import EXTRACT_SCRIPT, INIT_SCRIPT, SCRIPT_FILES, page_script
from simulators.tasks import load_sample_tasks, load_tasks

TAILWIND_V2 = '<link href="https://cdn.jsdelivr.net/npm/tailwindcss@2.2.19/dist/tailwind.min.css" rel="stylesheet">'
TAILWIND_V3 = '<script src="https://cdn.tailwindcss.com"></script>'
RED_500 = (239, 68, 68)  # Tailwind's red-500, the same in v2 and v3
HOSTILE_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def renderer():
    with Renderer() as r:
        r.render_many(["<p>warm-up</p>"] * r.pool_size)  # first navigation per context starts its process
        yield r


def pixel(result, x: int, y: int) -> tuple[int, int, int]:
    return result.image.getpixel((x, y))


def test_assets_present_for_these_tests(renderer):
    assert renderer.warnings == [], "run scripts/fetch_web_assets.sh \"$COLLAB_HOME/web\" first"


def test_dead_hosts_fail_fast(renderer):
    html = (
        "<html><head>"
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<script src="http://unreachable.invalid/app.js"></script>'
        "</head><body><h1>Still here</h1>"
        '<img src="https://images.example.com/hero.jpg" width="200" height="100">'
        '<iframe src="http://127.0.0.1:9/"></iframe>'
        '<img src="http://localhost:7860/favicon.ico">'
        "</body></html>"
    )
    results = [renderer.render(html) for _ in range(3)]
    result = results[0]
    assert result.ok, result.error
    # A host that is waited on costs seconds every time; the best of three keeps the bound
    # meaningful on a loaded machine.
    assert min(r.elapsed_s for r in results) < 1.0
    assert [b.text for b in result.blocks] == ["Still here"]
    assert not any(image.loaded for image in result.images if image.tag == "img")


def test_tailwind_v2_class_applies_from_local_file(renderer):
    html = f'<html>{TAILWIND_V2}<body class="m-0"><div class="bg-red-500 w-64 h-32"></div></body></html>'
    result = renderer.render(html)
    assert result.ok, result.error
    assert pixel(result, 50, 50) == RED_500
    assert pixel(result, 600, 50) == (255, 255, 255)


def test_tailwind_subset_keeps_exactly_the_rules_a_page_can_use():
    subset = TailwindSubset((web_dir() / TAILWIND_V2_FILE).read_text())
    assert len(subset) > 30000
    html = (
        '<div class="bg-red-500 sm:w-1/2 hover:bg-blue-700 group space-x-4 w-0.5 2xl:container">'
        '<p class="group-hover:text-white">x</p></div>'
        "<script>el.classList.add('text-green-600')</script>"
    )
    css = subset.for_html(html)
    assert len(css) < 60000
    for rule in (
        ".bg-red-500{",
        ".sm\\:w-1\\/2{width:50%}",
        ".hover\\:bg-blue-700:hover{",
        ".group:hover .group-hover\\:text-white{",
        ".space-x-4>:not([hidden])~:not([hidden]){",
        ".w-0\\.5{",
        ".\\32xl\\:container{",
        ".text-green-600{",  # named only in a script: kept
        "html{",  # preflight has no classes: always kept
        "@keyframes spin{",
    ):
        assert rule in css, rule
    for absent in (".bg-green-500{", ".md\\:w-1\\/2{", ".group-hover\\:text-black{"):
        assert absent not in css


def test_static_html_detection():
    assert is_static_html(f"<html>{TAILWIND_V2}<body><p class='p-4'>Hello</p><img src='x.png'></body></html>")
    for active in (
        "<script>1</script>",
        "<SCRIPT src=a.js></SCRIPT>",
        '<body onload="go()">',
        '<img src=x onerror = "go()">',
        '<a href="javascript:void(0)">x</a>',
        '<iframe src="a.html"></iframe>',
        '<object data="a.svg"></object>',
        '<meta http-equiv="refresh" content="0;url=b">',
    ):
        assert not is_static_html(f"<html><body>{active}</body></html>"), active


def test_page_scripts_load_from_the_package_resources():
    """Every script the renderer names is a non-empty file of the package, read through
    importlib.resources, and js/ holds no script that nothing runs."""
    js = resources.files("simulators.render") / "js"
    for name in SCRIPT_FILES:
        assert (js / name).is_file(), name
        text = (js / name).read_text(encoding="utf-8")
        assert text.strip(), name
        assert page_script(name) == text
    assert {INIT_SCRIPT, EXTRACT_SCRIPT} == {page_script(name) for name in SCRIPT_FILES}
    assert sorted(entry.name for entry in js.iterdir() if entry.name.endswith(".js")) == sorted(SCRIPT_FILES)


def test_a_built_wheel_carries_the_page_scripts(tmp_path):
    """A non-editable install has the scripts too: build the wheel from a copy of the source and
    load every script from that wheel, in a process that imports the package from it alone."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    for package in ("simulators", "training", "collab_app"):
        shutil.copytree(repo / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    # No build isolation (offline): the venv's own setuptools, the project's build backend, builds it.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("collab_rl-*.whl")
    check = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from simulators.render import page_scripts\n"
        "assert page_scripts.__file__.startswith(sys.argv[1]), page_scripts.__file__\n"
        "for name in page_scripts.SCRIPT_FILES:\n"
        "    print(name, len(page_scripts.page_script(name)))\n"
    )
    loaded = subprocess.run([sys.executable, "-I", "-c", check, str(wheel)], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    sizes = dict(line.split() for line in loaded.stdout.splitlines())
    assert sizes == {name: str(len(page_script(name))) for name in SCRIPT_FILES}


def test_fast_paths_give_the_same_pixels_as_a_plain_navigation(renderer):
    """Static pages are written into the current document and get a Tailwind subset; an empty
    script forces the full path (navigation, whole stylesheet), which must look the same."""
    pages = [task.ground_truth for task in load_sample_tasks("frontend")]
    # An inline image leaves a descender gap under it in standards mode only: the mode each page
    # asked for (by its doctype or the lack of one) must survive the fast path.
    inline_image = '<body style="margin:0"><div style="background:#ccddee"><img src="https://picsum.photos/id/48/100/50"></div></body>'
    pages += [f"<html>{inline_image}</html>", f"<!DOCTYPE html><html>{inline_image}</html>"]
    pages.append(
        f"<html>{TAILWIND_V2}<body>"
        '<div class="w-full h-64 bg-cover" style="background-image:url(https://picsum.photos/id/48/800/300)"></div>'
        '<div class="flex justify-center items-center h-screen bg-gray-800"><h1 class="text-white">Hero</h1></div>'
        "</body></html>"
    )
    fast = renderer.render_many(pages)
    with Renderer(tailwind_subset=False) as whole:
        slow = whole.render_many([page + "<script></script>" for page in pages])
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.png == b.png, f"page {i} differs"
        assert a.blocks == b.blocks
    quirks, standards = fast[-3], fast[-2]
    assert pixel(quirks, 150, 51) == (255, 255, 255) and pixel(standards, 150, 51) == (0xCC, 0xDD, 0xEE)


@pytest.mark.slow
def test_fast_paths_match_navigation_on_colbench_pages(renderer):
    path = Path(__file__).resolve().parents[2] / "shared" / "colbench" / "frontend_dev.jsonl"
    tasks = load_tasks(path, kind="frontend").items[:40] if path.is_file() else load_sample_tasks("frontend")
    pages = [task.ground_truth for task in tasks]
    fast = renderer.render_many(pages)
    with Renderer(tailwind_subset=False) as whole:
        slow = whole.render_many([page + "<script></script>" for page in pages])
    assert [i for i, (a, b) in enumerate(zip(fast, slow)) if not (a.ok and b.ok and a.png == b.png)] == []


def test_css_background_images_are_waited_for(renderer):
    html = '<html><body style="margin:0"><div style="width:400px;height:300px;background-image:url(https://picsum.photos/id/7/400/300)"></div></body></html>'
    for _ in range(3):
        result = renderer.render(html)
        assert result.ok, result.error
        assert pixel(result, 399, 299) != (255, 255, 255)  # the placeholder's dark corner, never blank


def test_tailwind_v3_cdn_script_applies(renderer):
    html = f'<html><head>{TAILWIND_V3}</head><body class="m-0"><div class="bg-red-500 w-[300px] h-[120px]"></div></body></html>'
    result = renderer.render(html)
    assert result.ok, result.error
    assert pixel(result, 100, 60) == RED_500
    assert pixel(result, 400, 60) == (255, 255, 255)


def test_missing_tailwind_files_warn_and_render_unstyled(tmp_path):
    assert "fetch_web_assets.sh" in asset_warnings(tmp_path)[0]
    with Renderer(assets_dir=tmp_path, pool_size=1) as bare:
        result = bare.render(f'<html>{TAILWIND_V2}<body class="m-0"><div class="bg-red-500 w-64 h-32">x</div></body></html>')
    assert result.ok, result.error
    assert any("fetch_web_assets.sh" in w for w in result.warnings)
    assert pixel(result, 50, 50) != RED_500


def test_picsum_placeholders_have_the_requested_size(renderer):
    html = (
        '<html><body style="margin:0">'
        '<img src="https://picsum.photos/id/48/300/200">'
        '<img src="https://picsum.photos/120/80.jpg?grayscale">'
        '<img src="https://picsum.photos/90">'
        '<img src="https://via.placeholder.com/32">'
        "</body></html>"
    )
    result = renderer.render(html)
    assert result.ok, result.error
    sizes = [(image.width, image.height, image.loaded) for image in result.images]
    assert sizes == [(300, 200, True), (120, 80, True), (90, 90, True), (32, 32, True)]
    png = placeholder_png("48", 300, 200)
    assert Image.open(io.BytesIO(png)).size == (300, 200)
    assert placeholder_png("48", 300, 200) == png


def test_same_html_gives_identical_pixels(renderer):
    html = (
        f"<html>{TAILWIND_V2}<body>"
        '<div class="animate-spin w-16 h-16 bg-blue-500 m-8"></div>'
        '<div style="transition: all 5s; width: 100px" id="grow" class="h-8 bg-green-500"></div>'
        "<p id=r></p><img src=\"https://picsum.photos/id/48/400/200\">"
        "<script>document.getElementById('r').textContent = Math.random();"
        "document.getElementById('grow').style.width = '600px';</script>"
        "</body></html>"
    )
    first, second = renderer.render(html), renderer.render(html)
    assert first.ok and second.ok
    assert first.png == second.png
    assert [b.text for b in first.blocks] == [b.text for b in second.blocks]


def test_viewport_width_and_full_page_height(renderer):
    short = renderer.render("<html><body><p>short</p></body></html>")
    tall = renderer.render('<html><body style="margin:0"><div style="height:3000px">tall</div></body></html>')
    assert (short.width, short.height) == (1366, 768)
    assert (tall.width, tall.height, tall.truncated) == (1366, 3000, False)
    assert tall.image.size == (1366, 3000)


def test_huge_page_is_capped(renderer):
    result = renderer.render('<html><body style="margin:0"><div style="height:100000px">huge</div></body></html>')
    assert result.ok, result.error
    assert result.height == renderer.max_height
    assert result.page_height == 100000
    assert result.truncated
    assert result.image.size == (1366, renderer.max_height)


def test_dom_extraction_reads_text_position_colour_and_size(renderer):
    html = (
        '<html><body style="margin:0;background:rgb(240,240,250)">'
        '<h1 style="position:absolute;left:100px;top:50px;margin:0;font-size:40px;color:rgb(10,20,30)">Hello</h1>'
        '<p style="position:absolute;left:100px;top:200px;margin:0">Hello <b>bold</b> world</p>'
        '<input style="position:absolute;left:100px;top:300px" placeholder="Your email">'
        '<p style="display:none">hidden</p><p style="visibility:hidden">invisible</p>'
        "</body></html>"
    )
    result = renderer.render(html)
    assert result.ok, result.error
    by_text = {b.text: b for b in result.blocks}
    assert set(by_text) == {"Hello", "Hello bold world", "Your email"}
    heading = by_text["Hello"]
    assert heading.x == 100 and abs(heading.y - 50) <= 3  # the text box sits inside its line box
    assert (heading.font_size, heading.color) == (40, (10, 20, 30))
    assert heading.tag == "h1" and heading.font_weight == 700
    assert heading.background == (240, 240, 250) == result.background
    assert by_text["Hello bold world"].tag == "p"


def test_page_without_html_element_renders(renderer):
    result = renderer.render("<h1>Just a heading</h1><p>and a paragraph")
    assert result.ok, result.error
    assert [b.text for b in result.blocks] == ["Just a heading", "and a paragraph"]


def test_not_a_string_is_a_failure(renderer):
    result = renderer.render(None)  # type: ignore[arg-type]
    assert not result.ok and "HTML string" in result.error


def assert_still_usable(renderer):
    result = renderer.render("<html><body><h2>next page</h2></body></html>")
    assert result.ok, result.error
    assert [b.text for b in result.blocks] == ["next page"]


def test_infinite_script_loop_times_out_and_renderer_recovers(renderer):
    recycled = renderer.slots_recycled
    started = time.monotonic()
    result = renderer.render("<html><body><p>spin</p><script>while (true) {}</script></body></html>", timeout_s=HOSTILE_TIMEOUT_S)
    assert time.monotonic() - started < HOSTILE_TIMEOUT_S + 3
    assert not result.ok
    assert "did not finish rendering" in result.error
    assert_still_usable(renderer)
    deadline = time.monotonic() + 10
    while renderer.slots_recycled == recycled and time.monotonic() < deadline:  # replaced in the background
        time.sleep(0.1)
    assert renderer.slots_recycled == recycled + 1


def test_loop_started_after_load_returns_within_the_timeout(renderer):
    html = "<html><body><p>late spin</p><script>onload = () => setTimeout(() => { while (true) {} }, 30);</script></body></html>"
    started = time.monotonic()
    result = renderer.render(html, timeout_s=HOSTILE_TIMEOUT_S)
    assert time.monotonic() - started < HOSTILE_TIMEOUT_S + 3
    assert result.ok or "did not finish rendering" in result.error
    assert_still_usable(renderer)


def test_a_page_that_starts_spinning_after_its_render_does_not_hold_up_the_next_one():
    """One slot, so the next render must leave the spinning page: a script loop that a timer starts
    after the render returned would otherwise keep the next navigation past its deadline."""
    with Renderer(pool_size=1) as one_slot:
        spin_later = "<html><body><p>spins later</p><script>setTimeout(() => { while (true) {} }, 1500);</script></body></html>"
        assert one_slot.render(spin_later, timeout_s=HOSTILE_TIMEOUT_S).ok  # rendered well before the timer
        time.sleep(2.5)  # the page's own timer fires at 1.5 s: it spins now
        started = time.monotonic()
        result = one_slot.render("<html><body><h2>next page</h2></body></html>", timeout_s=HOSTILE_TIMEOUT_S)
        assert result.ok, result.error
        assert [b.text for b in result.blocks] == ["next page"]
        assert time.monotonic() - started < 3.0


def test_dialogs_are_dismissed(renderer):
    html = (
        "<html><body><p>dialogs</p><script>"
        "alert('hi'); confirm('sure?'); prompt('name?');"
        "addEventListener('beforeunload', (e) => { e.preventDefault(); e.returnValue = 'stay'; });"
        "</script></body></html>"
    )
    started = time.monotonic()
    result = renderer.render(html, timeout_s=HOSTILE_TIMEOUT_S)
    assert result.ok, result.error
    assert time.monotonic() - started < 3.0
    assert_still_usable(renderer)  # a beforeunload handler must not block the next navigation


def test_window_open_spam_opens_nothing(renderer):
    html = (
        "<html><body><p>popups</p><iframe srcdoc='<p>frame</p>'></iframe><script>"
        "for (let i = 0; i < 200; i++) { window.open('about:blank'); }"
        "onload = () => { for (let i = 0; i < 20; i++) { frames[0].open('https://example.com/' + i); } };"
        "</script></body></html>"
    )
    started = time.monotonic()
    result = renderer.render(html, timeout_s=HOSTILE_TIMEOUT_S)
    assert result.ok, result.error
    assert time.monotonic() - started < 3.0
    assert_still_usable(renderer)


def test_huge_dom_returns_within_the_timeout(renderer):
    html = "<html><body><script>document.write('<div>row</div>'.repeat(200000));</script></body></html>"
    started = time.monotonic()
    result = renderer.render(html, timeout_s=HOSTILE_TIMEOUT_S * 2)
    assert time.monotonic() - started < HOSTILE_TIMEOUT_S * 2 + 3
    if result.ok:
        assert result.height == renderer.max_height and result.truncated
        assert len(result.blocks) <= MAX_BLOCKS
    else:
        assert "did not finish rendering" in result.error
    assert_still_usable(renderer)


def test_concurrent_callers_get_their_own_pages(renderer):
    results: dict[int, object] = {}

    def work(i: int) -> None:
        results[i] = renderer.render(f"<html><head><title>page {i}</title></head><body><p>body {i}</p></body></html>")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(6))
    for i, result in results.items():
        assert result.ok, result.error
        assert result.title == f"page {i}" and [b.text for b in result.blocks] == [f"body {i}"]


def test_render_many_keeps_input_order(renderer):
    results = renderer.render_many([f"<p>item {i}</p>" for i in range(5)])
    assert [r.blocks[0].text for r in results] == [f"item {i}" for i in range(5)]


def test_closed_renderer_refuses_work():
    bare = Renderer(pool_size=1)
    bare.close()
    with pytest.raises(RuntimeError, match="closed"):
        bare.render("<p>x</p>")


FETCH_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_web_assets.sh"


def test_fetch_script_is_idempotent_and_explains_a_missing_npm(tmp_path):
    present = tmp_path / "present"
    present.mkdir()
    for name in (TAILWIND_V2_FILE, "tailwindcss-3.4.10.js"):
        (present / name).write_text("/* already fetched */")
    done = subprocess.run(["bash", str(FETCH_SCRIPT), str(present)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "already" in done.stdout

    # A PATH with the basic tools but no npm.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "mktemp", "rm", "cp", "mv", "tar", "sed", "tail", "wc"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    missing = subprocess.run(
        [shutil.which("bash"), str(FETCH_SCRIPT), str(tmp_path / "web")],
        capture_output=True, text=True, timeout=60, env={"PATH": str(bin_dir)},
    )
    assert missing.returncode != 0
    assert "npm is not installed" in missing.stderr and "Traceback" not in missing.stderr


SECRET_PAGE = ("<html><body><p>TOPSECRET-reference-page</p><script>"
               "const until = Date.now() + 1500; while (Date.now() < until) {}</script></body></html>")
PAGE_SNOOPER = """<html><body><pre id="out">?</pre><script>
// Scan the proxy for other pages while one is being rendered beside this one (synchronous
// requests keep this page from loading, so what it found is in the DOM when it is read).
const own = parseInt(location.pathname.split("/").pop());
const guesses = [];
for (let d = 1; d <= 50; d++) guesses.push(own - d, own + d);
for (let id = 1; id <= 200; id++) guesses.push(id);
let found = "nothing";
const until = Date.now() + 2000;
while (Date.now() < until && found === "nothing") {
  for (const id of guesses) {
    const request = new XMLHttpRequest();
    request.open("GET", "/page/" + id, false);
    try {
      request.send();
      const match = request.status === 200 && request.responseText.match(/TOPSECRET-[a-z-]+/);
      if (match) { found = match[0]; break; }
    } catch (error) {}
  }
}
document.getElementById("out").textContent = found;
</script></body></html>"""


def test_a_page_cannot_read_another_page_from_the_proxy(renderer):
    """An answer's page rendered beside the reference page must not fetch the reference's HTML from
    the render proxy (and copy it into its own screenshot): page addresses cannot be guessed."""
    snooper, secret = renderer.render_many([PAGE_SNOOPER, SECRET_PAGE], timeout_s=20)
    assert snooper.ok and secret.ok, (snooper.error, secret.error)
    assert [b.text for b in snooper.blocks] == ["nothing"]
