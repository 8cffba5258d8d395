
È
web
10.0.0.1žuv1"web-1
10.0.0.2žuv2"web-2Š{"routes": [
  {"name": "beta", "match": {"pathPrefix": "/", "headers": {"x-canary": "always"}},
   "backends": [{"subset": "v2", "weight": 100}]},
  {"name": "default", "match": {"pathPrefix": "/"},
   "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
   "timeout": "2s",
   "retries": {"attempts": 2, "perTryTimeout": "500ms", "on": ["5xx", "connect-failure"]}}
]} 