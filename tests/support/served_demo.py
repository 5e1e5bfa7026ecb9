"""The demo served in the test process on a free local port, with a gradio_client connected (test_demo, test_safety)."""

from support.ports import free_port

from hftransfer.demo import build_demo


class Served:
    """A demo running in this process on a free port, with a gradio_client connected to it."""

    def __init__(self, model):
        from gradio_client import Client

        self.model = str(model)
        self.demo = build_demo(self.model)
        self.demo.queue(default_concurrency_limit=1)
        self.port = free_port()
        self.demo.launch(server_name="127.0.0.1", server_port=self.port, prevent_thread_lock=True, quiet=True)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.client = Client(self.url, verbose=False)

    def predict(self, *values):  # one value a widget: a sentence pair's two texts
        return self.client.predict(*values, api_name="/predict")

    def close(self):
        self.demo.close()
