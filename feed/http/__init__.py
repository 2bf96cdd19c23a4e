"""The aiohttp adapter: the application, its routes and the one place errors become JSON."""
