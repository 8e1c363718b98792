"""Developer tools the tests and the chart need (helm), obtained from package registries and cached."""
