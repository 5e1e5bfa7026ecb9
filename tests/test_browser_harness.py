"""The headless-browser harness (tests/support/browser.py) against a throwaway Gradio 6 app shaped like the demo."""

import gradio as gr
import pytest
from PIL import Image
from support.browser import browser_available, headless_page
from support.ports import free_port

pytestmark = pytest.mark.skipif(browser_available() is not None, reason=str(browser_available()))

EMPTY = "Empty text: type something to classify"


def classify(image, text):
    """Text wins when there is some; else the image's aspect ratio; neither is the user's mistake."""
    if text and text.strip():
        return {"long": 0.8, "short": 0.2} if len(text) > 20 else {"short": 0.8, "long": 0.2}
    if image:
        with Image.open(image) as opened:
            width, height = opened.size
        return {"wide": 0.7, "tall": 0.3} if width >= height else {"tall": 0.7, "wide": 0.3}
    raise gr.Error(EMPTY)


def build_app():
    with gr.Blocks(analytics_enabled=False) as demo:
        with gr.Tabs():
            with gr.Tab("Predict"):
                image = gr.Image(type="filepath", elem_id="image-input")
                text = gr.Textbox(elem_id="text-input")
                button = gr.Button("Classify", elem_id="predict-button")
                label = gr.Label(num_top_classes=3, elem_id="prediction")
            with gr.Tab("Results"):
                gr.Markdown("Nothing trained yet.", elem_id="results-text")
        button.click(classify, [image, text], label)
    return demo


@pytest.fixture(scope="module")
def app_url():
    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    with headless_page() as page:
        yield page


@pytest.fixture
def page(browser, app_url):
    browser.open(app_url)
    return browser


def test_empty_text_shows_the_gr_error(page):
    page.type_text("text-input", "")
    page.click("predict-button")
    assert page.read_error() == EMPTY


def test_uploaded_image_then_text_each_read_fresh(page, tmp_path):
    Image.new("RGB", (64, 32), (200, 40, 40)).save(tmp_path / "wide.png")
    Image.new("RGB", (20, 60), (40, 40, 200)).save(tmp_path / "tall.png")

    page.upload_image("image-input", tmp_path / "wide.png")
    page.click("predict-button")
    assert page.read_label("prediction") == "wide"

    page.upload_image("image-input", tmp_path / "tall.png")  # replaces the first upload
    page.click("predict-button")
    assert page.read_label("prediction") == "tall"

    page.type_text("text-input", "a sentence well over twenty characters")
    page.click("predict-button")
    assert page.read_label("prediction") == "long"

    page.type_text("text-input", "hi")
    page.click("predict-button")
    assert page.read_label("prediction") == "short"


def test_a_gr_error_fails_read_label_with_its_message(page):
    page.click("predict-button")
    with pytest.raises(AssertionError, match="Empty text"):
        page.read_label("prediction", timeout=10)


def test_tabs_switch_by_label(page):
    page.select_tab("Results")
    results = page.driver.find_element("css selector", "#results-text")  # Gradio 6 renders a tab when first shown
    assert results.is_displayed() and "Nothing trained yet." in results.text
    assert not page.driver.find_element("css selector", "#predict-button").is_displayed()
    page.select_tab("Predict")
    assert page.driver.find_element("css selector", "#predict-button").is_displayed()


def test_screenshot_is_a_png(page, tmp_path):
    path = page.screenshot(tmp_path / "demo.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    with Image.open(path) as shot:
        assert shot.width == 1280 and shot.height >= 600
