-- The sidecar process behind a registration (Hello.instance): a second live
-- registration of the same pod is refused unless it comes from the same process.
ALTER TABLE sidecars ADD COLUMN instance TEXT NOT NULL DEFAULT '';
