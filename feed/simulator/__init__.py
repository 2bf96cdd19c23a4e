"""A simulated Hérault over the real protocols: `roadfeed simulate`.

Sixty-odd counting sites on departmental roads and a timeline of road events,
served the way the real sources serve them (an Opendatasoft Explore v2.1 portal
and DATEX II situation feeds), so the real collectors can be pointed at it.

- `geography`: the outline, roads, communes and counting sites;
- `draws`: pure random draws from (seed, key);
- `traffic`: the counts model; `events`: the event timeline;
- `simulation`: counts and events for one seed; `clock`: simulated time;
- `odsql`: the query-language subset; `datasets`: the two Opendatasoft datasets;
- `server`: the HTTP server; `sources`: the `[[sources]]` that poll it;
- `national`: the national scenario (an NDW-sized network, DATEX II measured data).
"""
