"""Shared test helpers: tiny models and chat templates, one bundle factory, the fake OpenAI
server, polling, the console-script runner, the import-layer checker. Test modules import from
here, never from each other."""
