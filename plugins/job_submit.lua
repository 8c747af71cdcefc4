--[[
slurmgov submit-time GPU budget hook (Slurm job_submit/lua, tested on Slurm 22.05, Lua 5.1).

Install: copy next to slurm.conf with JobSubmitPlugins=lua.  The files below live in the
same directory as this script (the "hook dir"):

  slurmgov_snapshot.txt  budgets, written by slurmgov (format below); read, never executed
  slurmgov_hook.conf     optional; "key value" lines: snapshot_path, journal_path,
                         fail_policy (open|closed, used only when the snapshot is unreadable),
                         default_time_min
  slurmgov_journal.log   one line appended per admitted GPU job (format below)

For every job that requests GPUs the hook computes a worst-case cost in weighted
GPU-seconds and admits it only if the account's available budget covers it, where

  available = snapshot budget of the account - costs this hook admitted since the snapshot

The second term is read back from the journal (authoritative; an in-memory cache only
avoids re-reading lines already seen).  Jobs without GPUs are admitted untouched.

SNAPSHOT FORMAT (version 1)
  Text, UTF-8, one record per line, fields separated by a single TAB, no quoting.
  Fields may not contain TAB, CR or LF (the writer must refuse such names).
  Empty lines and lines starting with "#" are ignored; unknown keys are ignored.
  Line 1 must be exactly:     slurmgov-snapshot<TAB>1
  Last line must be exactly:  end            (a file without it is unreadable: torn write)
  Keys (one per line, in any order between the first and last line):
    serial<TAB><int>                 required; changes with every snapshot written
    written<TAB><unix seconds>       required; when the snapshot was computed
    max_age_s<TAB><int>              required; older than this => stale
    fail_policy<TAB>closed|open      default closed; what to do when stale
    default_time_min<TAB><int>       default 60; time limit for jobs with none and no
                                     partition DefaultTime/MaxTime
    max_gpus_per_node<TAB><int>      optional; larger per-node requests can never start
    total_gpus<TAB><int>             optional; larger per-task totals can never start
    sockets_per_node<TAB><int>       default 1; for --gpus-per-socket without
                                     --sockets-per-node
    journal_offset<TAB><int>         optional; bytes of the journal the writer had already
                                     charged when it computed the budgets.  When present,
                                     every admit line at or after that byte offset is
                                     subtracted (whatever its serial); when absent, the
                                     admit lines whose serial equals this snapshot's serial.
    weight<TAB><gpu type><TAB><num>  cost weight of a typed GPU (e.g. h100 1.0)
    default_weight<TAB><num>         default 1.0; weight of untyped GPUs and unknown types
    account<TAB><name><TAB><num>     available weighted GPU-seconds (may be negative)
  Numbers are plain decimals (optional sign, fraction, exponent); anything else, a
  missing required key, or a duplicate account line makes the snapshot unreadable.
  Account names are compared with plain string equality (never as patterns).

COST
  gpus per array task = the largest of the request forms, each converted to a total:
    tres_per_node  (--gres=gpu[:type]:N, --gpus-per-node)   N x nodes
    tres_per_job   (--gpus/-G)                               N
    tres_per_task  (--gpus-per-task)                         N x tasks
    tres_per_socket (--gpus-per-socket)                      N x sockets/node x nodes
  nodes = max(min_nodes, max_nodes) (unset -> 1); tasks = num_tasks, else
  ntasks_per_node x nodes, else 1.  Each GPU is weighted by its type's weight.
  time = time_limit minutes; unset -> the partition's DefaultTime, else its MaxTime,
  else default_time_min; UNLIMITED (or 0) -> partition MaxTime, refused if none.
  cost (weighted GPU-seconds) = weighted gpus x array tasks x time x 60.

JOURNAL LINE (one per admitted GPU job, 10 TAB-separated fields, sanitised of TAB/CR/LF)
  admit ts serial token account user_id cost_gpu_s gpus time_limit_min gpu_type
    ts              unix seconds of admission
    serial          snapshot serial charged; "0" for a fail-open admission (never
                    counted against any snapshot by serial)
    token           also stored in the job's AdminComment as "slurmgov:hold=<token>"
    account         the job's account (its --account, else the user's default)
    user_id         numeric uid of the submitter
    cost_gpu_s      weighted worst-case GPU-seconds for the whole job, all array tasks, "%.3f"
    gpus            GPUs per array task (unweighted)
    time_limit_min  the worst-case time limit used for the cost
    gpu_type        the GPU type requested, "-" if untyped, types joined by "+" if several
  The array task count is cost_gpu_s / (gpus x time_limit_min x 60 x weight).

Safety: no network, no sleeps, no os.execute/io.popen, no load/loadstring/dofile.
All slurm.log_* calls pass data through "%s" (those functions run string.format).
--]]

local NO_VAL = 4294967294
local INFINITE = 4294967295
local NO_VAL16 = 65534
local INFINITE16 = 65535

local SNAPSHOT_NAME = "slurmgov_snapshot.txt"
local JOURNAL_NAME = "slurmgov_journal.log"
local HOOK_CONF_NAME = "slurmgov_hook.conf"
local REFUSALS_NAME = "slurmgov_refusals.log"

-- Directory of this script: Slurm loads it with luaL_loadfile, so source is "@/path/file".
local function script_dir()
	local info = debug and debug.getinfo and debug.getinfo(1, "S")
	local src = info and info.source or ""
	if string.sub(src, 1, 1) == "@" then
		local dir = string.match(string.sub(src, 2), "^(.*)/[^/]*$")
		if dir and dir ~= "" then return dir end
	end
	local conf = os.getenv("SLURM_CONF")
	if conf then
		local dir = string.match(conf, "^(.*)/[^/]*$")
		if dir and dir ~= "" then return dir end
	end
	return "/etc/slurm"
end

local HOOK_DIR = script_dir()

-- Survives between calls while slurmctld keeps this Lua state; never required for correctness.
slurmgov_state = slurmgov_state or { counter = 0, journal = nil }
math.randomseed(os.time() + math.floor((os.clock() * 1000000) % 1000000))

local function log_user(msg) slurm.log_user("%s", msg) end
local function log_info(msg) slurm.log_info("%s", msg) end

-- Printable text for messages: control characters become "?".
local function printable(s)
	return (string.gsub(tostring(s), "%c", "?"))
end

-- One journal/settle field: no TAB, CR or LF; empty -> "-".
local function field(s)
	if s == nil then return "-" end
	s = string.gsub(tostring(s), "[\t\r\n]", " ")
	if s == "" then return "-" end
	return s
end

local function fmt_gpuh(gpu_s)
	local s = string.format("%.2f", gpu_s / 3600)
	s = string.gsub(s, "(%.%d)0$", "%1")
	return s
end

-- Split on TAB with a plain find (data never becomes a pattern).
local function split_tabs(line)
	local out, pos = {}, 1
	while true do
		local i = string.find(line, "\t", pos, true)
		if not i then
			out[#out + 1] = string.sub(line, pos)
			return out
		end
		out[#out + 1] = string.sub(line, pos, i - 1)
		pos = i + 1
	end
end

local function parse_num(s)
	if type(s) ~= "string" then return nil end
	if string.match(s, "^%-?%d+%.?%d*$") or string.match(s, "^%-?%d+%.?%d*[eE][%-+]?%d+$")
	   or string.match(s, "^%-?%.%d+$") then
		local n = tonumber(s)
		if n and n == n and n ~= math.huge and n ~= -math.huge then return n end
	end
	return nil
end

local function parse_int(s)
	if type(s) == "string" and string.match(s, "^%d+$") then return tonumber(s) end
	return nil
end

local function read_file(path)
	local f, err = io.open(path, "r")
	if not f then return nil, err end
	local data = f:read("*a")
	f:close()
	if not data then return nil, "read failed" end
	return data
end

local function lines_of(data)
	local out = {}
	for line in string.gmatch(data, "([^\n]*)\n?") do
		if string.sub(line, -1) == "\r" then line = string.sub(line, 1, -2) end
		out[#out + 1] = line
	end
	-- gmatch yields a trailing empty match after the last newline
	if out[#out] == "" then out[#out] = nil end
	return out
end

-- Optional hook config: "key value" (whitespace separated, value = rest of line).
local function read_hook_conf()
	local conf = {
		snapshot_path = HOOK_DIR .. "/" .. SNAPSHOT_NAME,
		journal_path = HOOK_DIR .. "/" .. JOURNAL_NAME,
		refusals_path = HOOK_DIR .. "/" .. REFUSALS_NAME,
		fail_policy = "closed",
		default_time_min = 60,
	}
	local data = read_file(HOOK_DIR .. "/" .. HOOK_CONF_NAME)
	if not data then return conf end
	for _, line in ipairs(lines_of(data)) do
		local key, value = string.match(line, "^%s*([%w_]+)%s+(.-)%s*$")
		if key and string.sub(line, 1, 1) ~= "#" then
			if key == "snapshot_path" or key == "journal_path" or key == "refusals_path" then
				if value ~= "" then conf[key] = value end
			elseif key == "fail_policy" then
				if value == "open" or value == "closed" then conf.fail_policy = value end
			elseif key == "default_time_min" then
				local n = parse_int(value)
				if n and n > 0 then conf.default_time_min = n end
			end
		end
	end
	return conf
end

-- Returns snapshot table, or nil and a reason. read_snapshot keeps the parse per rewrite.
local function parse_snapshot(data)
	local lines = lines_of(data)
	if lines[1] ~= "slurmgov-snapshot\t1" then
		return nil, "not a version 1 slurmgov snapshot"
	end
	local last = #lines
	while last > 1 and lines[last] == "" do last = last - 1 end
	if lines[last] ~= "end" then return nil, "no end line (incomplete write?)" end
	local snap = {
		fail_policy = "closed", default_time_min = 60, sockets_per_node = 1,
		default_weight = 1.0, weights = {}, accounts = {},
	}
	for i = 2, last - 1 do
		local line = lines[i]
		if line ~= "" and string.sub(line, 1, 1) ~= "#" then
			local f = split_tabs(line)
			local key, bad = f[1], false
			if key == "serial" then
				snap.serial = parse_int(f[2]); bad = (snap.serial == nil or #f ~= 2)
				snap.serial_str = f[2]
			elseif key == "written" then
				snap.written = parse_num(f[2]); bad = (snap.written == nil or #f ~= 2)
			elseif key == "max_age_s" then
				snap.max_age_s = parse_num(f[2]); bad = (snap.max_age_s == nil or #f ~= 2)
			elseif key == "fail_policy" then
				bad = (#f ~= 2 or (f[2] ~= "open" and f[2] ~= "closed"))
				snap.fail_policy = f[2]
			elseif key == "default_time_min" then
				snap.default_time_min = parse_int(f[2])
				bad = (snap.default_time_min == nil or snap.default_time_min <= 0 or #f ~= 2)
			elseif key == "max_gpus_per_node" or key == "total_gpus" or key == "sockets_per_node"
			       or key == "journal_offset" then
				snap[key] = parse_int(f[2]); bad = (snap[key] == nil or #f ~= 2)
			elseif key == "default_weight" then
				snap.default_weight = parse_num(f[2])
				bad = (snap.default_weight == nil or snap.default_weight < 0 or #f ~= 2)
			elseif key == "weight" then
				local w = parse_num(f[3])
				bad = (#f ~= 3 or f[2] == "" or w == nil or w < 0)
				if not bad then snap.weights[f[2]] = w end
			elseif key == "account" then
				local a = parse_num(f[3])
				bad = (#f ~= 3 or f[2] == "" or a == nil or snap.accounts[f[2]] ~= nil)
				if not bad then snap.accounts[f[2]] = a end
			end
			if bad then
				return nil, "bad line " .. i .. " (" .. printable(key) .. ")"
			end
		end
	end
	if not snap.serial or not snap.written or not snap.max_age_s then
		return nil, "missing serial, written or max_age_s"
	end
	if snap.sockets_per_node < 1 then snap.sockets_per_node = 1 end
	return snap
end

local function read_snapshot(path)
	local f, err = io.open(path, "r")
	if not f then return nil, "cannot read " .. path .. ": " .. tostring(err) end
	-- Writers change the serial (line 2) with every rewrite and rename whole files into place,
	-- so the same path, serial and size mean the same snapshot: reuse its parse without
	-- reading the rest (a 10,000-account snapshot is ~300 KB).
	local head = f:read(64) or ""
	local size = f:seek("end")
	local serial = string.match(head, "^slurmgov%-snapshot\t1\r?\nserial\t(%d+)\r?\n")
	local c = slurmgov_state.snapshot
	if serial and c and c.path == path and c.serial == serial and c.size == size then
		f:close()
		return c.snap, c.err
	end
	f:seek("set", 0)
	local data = f:read("*a")
	f:close()
	if not data then return nil, "cannot read " .. path .. ": read failed" end
	local snap, perr = parse_snapshot(data)
	slurmgov_state.snapshot = { path = path, serial = serial, size = size, snap = snap, err = perr }
	return snap, perr
end

-- Sum of admitted costs per account that the snapshot does not yet include.
-- Returns table account -> cost, or nil and a reason when the journal cannot be read.
local function charged_since(snap, journal_path)
	local st = slurmgov_state
	local mode, start
	if snap.journal_offset then
		mode, start = "offset", snap.journal_offset
	else
		mode, start = "serial", 0
	end
	local f = io.open(journal_path, "r")
	if not f then
		-- No journal yet: nothing admitted.
		st.journal = nil
		return {}
	end
	local size = f:seek("end") or 0
	if size < start then start = 0 end -- journal rotated after the snapshot: all of it is new
	local c = st.journal
	if not c or c.path ~= journal_path or c.mode ~= mode or c.serial ~= snap.serial_str
	   or c.start ~= start or size < c.offset then
		c = { path = journal_path, mode = mode, serial = snap.serial_str, start = start,
		      offset = start, sums = {} }
	end
	if size > c.offset then
		f:seek("set", c.offset)
		local data = f:read(size - c.offset) or ""
		-- Only whole lines: a line being appended right now is picked up next time.
		local last_nl = nil
		local p = 0
		while true do
			local i = string.find(data, "\n", p + 1, true)
			if not i then break end
			last_nl = i
			p = i
		end
		if last_nl then
			local chunk = string.sub(data, 1, last_nl)
			for line in string.gmatch(chunk, "([^\n]*)\n") do
				local t = split_tabs(line)
				if t[1] == "admit" and #t >= 7 then
					local cost = parse_num(t[7])
					if cost and (mode == "offset" or t[3] == snap.serial_str) then
						c.sums[t[5]] = (c.sums[t[5]] or 0) + cost
					end
				end
			end
			c.offset = c.offset + last_nl
		end
	end
	f:close()
	st.journal = c
	return c.sums
end

-- GPU entries of one TRES string: list of {type=<string|nil>, count=<number>}.
-- Accepts "gres:gpu:2", "gres:gpu:h100:2", "gres:gpu", "gres/gpu:h100:2", comma lists.
local function gpu_entries(tres)
	local out = {}
	if type(tres) ~= "string" or tres == "" then return out end
	for item in string.gmatch(tres, "[^,]+") do
		local rest = nil
		if string.sub(item, 1, 5) == "gres:" or string.sub(item, 1, 5) == "gres/" then
			rest = string.sub(item, 6)
		end
		if rest then
			local parts = {}
			for p in string.gmatch(rest, "[^:]+") do parts[#parts + 1] = p end
			if parts[1] == "gpu" then
				local gtype, cnt = nil, nil
				local function count_of(s)
					local num, suf = string.match(s, "^(%d+)([kKmMgG]?)$")
					if not num then return nil end
					local n = tonumber(num)
					if suf == "k" or suf == "K" then n = n * 1024
					elseif suf == "m" or suf == "M" then n = n * 1048576
					elseif suf == "g" or suf == "G" then n = n * 1073741824 end
					return n
				end
				if #parts == 1 then
					cnt = 1
				elseif #parts == 2 then
					cnt = count_of(parts[2])
					if not cnt then gtype, cnt = parts[2], 1 end
				else
					gtype, cnt = parts[2], count_of(parts[3])
				end
				if not cnt then return nil, "cannot parse GPU request " .. printable(item) end
				out[#out + 1] = { type = gtype, count = cnt }
			end
		end
	end
	return out
end

-- Number of array tasks from array_inx ("0-9", "1,3,5", "0-15:4", "0-99%10").
local function array_count(spec)
	if spec == nil or spec == "" then return 1 end
	local body = string.match(spec, "^([^%%]*)%%%d+$") or spec
	local seen, n, work = {}, 0, 0
	for item in string.gmatch(body, "[^,]+") do
		local a, b, s = string.match(item, "^(%d+)%-(%d+):(%d+)$")
		if not a then a, b = string.match(item, "^(%d+)%-(%d+)$"); s = "1" end
		if not a then a = string.match(item, "^(%d+)$"); b = a; s = "1" end
		if not a then return nil, "cannot parse array spec " .. printable(spec) end
		a, b, s = tonumber(a), tonumber(b), tonumber(s)
		if s < 1 or b < a then return nil, "bad array range " .. printable(item) end
		work = work + math.floor((b - a) / s) + 1
		if work > 5000000 then return nil, "array spec too large " .. printable(spec) end
		for i = a, b, s do
			if not seen[i] then seen[i] = true; n = n + 1 end
		end
	end
	if n == 0 then return nil, "empty array spec" end
	return n
end

local function set_num(v, unset)
	if v == nil or v == unset or v == NO_VAL or v == INFINITE or v == NO_VAL16
	   or v == INFINITE16 then return nil end
	return v
end

-- Worst-case request of a job: returns req table or nil, reason.
--   req.gpus (per array task), req.weighted (weighted GPUs per task), req.per_node,
--   req.types (string), req.tasks_in_array, req.any_gpu
local function gpu_request(job_desc, weights, default_weight, sockets_default)
	local min_nodes = set_num(job_desc.min_nodes)
	local max_nodes = set_num(job_desc.max_nodes)
	local nodes = math.max(min_nodes or 1, max_nodes or 1)
	local ntasks = set_num(job_desc.num_tasks)
	local tpn = set_num(job_desc.ntasks_per_node)
	local tasks = ntasks or (tpn and tpn * nodes) or 1
	local spn = set_num(job_desc.sockets_per_node) or sockets_default

	local best = nil
	local typeset = {}
	local per_node_max = 0
	local function consider(tres, mult, per_node_mult)
		local entries, err = gpu_entries(tres)
		if not entries then return err end
		if #entries == 0 then return nil end
		local g, w = 0, 0
		for _, e in ipairs(entries) do
			g = g + e.count
			local wt = default_weight
			if e.type then
				typeset[e.type] = true
				if weights[e.type] then wt = weights[e.type] end
			end
			w = w + e.count * wt
		end
		if per_node_mult then per_node_max = math.max(per_node_max, g * per_node_mult) end
		local cand = { gpus = g * mult, weighted = w * mult }
		if not best or cand.weighted > best.weighted
		   or (cand.weighted == best.weighted and cand.gpus > best.gpus) then
			best = cand
		end
		return nil
	end
	local err = consider(job_desc.tres_per_node, nodes, 1)
		or consider(job_desc.tres_per_job, 1, (nodes == 1 and max_nodes == 1) and 1 or nil)
		or consider(job_desc.tres_per_task, tasks, tpn)
		or consider(job_desc.tres_per_socket, spn * nodes, spn)
	if err then return nil, err end
	if not best or best.gpus <= 0 then return { any_gpu = false } end
	local names = {}
	for t in pairs(typeset) do names[#names + 1] = t end
	table.sort(names)
	local arr, aerr = array_count(job_desc.array_inx)
	if not arr then return nil, aerr end
	return {
		any_gpu = true, gpus = best.gpus, weighted = best.weighted, per_node = per_node_max,
		nodes = nodes, max_nodes = max_nodes,
		types = (#names > 0) and table.concat(names, "+") or "-",
		tasks_in_array = arr,
	}
end

-- Partition records the job may run in (named ones, else the default partition).
local function job_partitions(job_desc, part_list)
	local out = {}
	if type(part_list) ~= "table" then return out end
	local wanted = job_desc.partition
	if wanted and wanted ~= "" then
		local names = {}
		for n in string.gmatch(wanted, "[^,]+") do names[n] = true end
		for _, p in pairs(part_list) do
			if p.name and names[p.name] then out[#out + 1] = p end
		end
	else
		for _, p in pairs(part_list) do
			if p.flag_default == 1 or p.flag_default == true then out[#out + 1] = p end
		end
	end
	return out
end

-- Worst-case time limit in minutes, or nil and a reason.
local function time_limit_min(job_desc, part_list, default_time_min)
	local tl = job_desc.time_limit
	local parts = job_partitions(job_desc, part_list)
	local function worst(field)
		local m = nil
		for _, p in ipairs(parts) do
			local v = set_num(p[field])
			if v and v > 0 then m = math.max(m or 0, v) end
		end
		return m
	end
	if tl == nil or tl == NO_VAL then
		return worst("default_time") or worst("max_time") or default_time_min
	end
	if tl == INFINITE or tl == 0 then
		local m = worst("max_time")
		if not m then
			return nil, "job has no time limit and its partition has no MaxTime; give --time"
		end
		return m
	end
	return tl
end

local function new_token()
	slurmgov_state.counter = (slurmgov_state.counter or 0) + 1
	return string.format("%d-%d-%04x", os.time(), slurmgov_state.counter, math.random(0, 65535))
end

local function admit(job_desc, journal_path, serial, account, cost, req, tl)
	local token = new_token()
	local line = table.concat({
		"admit", string.format("%d", os.time()), field(serial), field(token), field(account),
		field(job_desc.user_id), string.format("%.3f", cost), string.format("%d", req.gpus),
		string.format("%d", tl), field(req.types),
	}, "\t") .. "\n"
	-- "a+": every write still goes to the end (O_APPEND); reading tells whether the journal
	-- ends with a half line (slurmctld died mid-append). That half line is ended first, so
	-- this job's line stays whole: glued onto it, the hold would be unparseable and lost.
	local f, err = io.open(journal_path, "a+")
	if not f then
		log_user("slurmgov: cannot record the GPU hold (" .. printable(err) .. "); job refused")
		return slurm.ERROR
	end
	local size = f:seek("end")
	if size and size > 0 and f:seek("set", size - 1) and f:read(1) ~= "\n" then
		line = "\n" .. line
	end
	f:seek("end") -- C stdio: a seek between reading and writing
	local ok, werr = f:write(line)
	local cok = f:close()
	if not ok or not cok then
		log_user("slurmgov: cannot record the GPU hold (" .. printable(werr) .. "); job refused")
		return slurm.ERROR
	end
	local old = job_desc.admin_comment
	local hold = "slurmgov:hold=" .. token
	if old and old ~= "" then hold = hold .. " " .. old end
	job_desc.admin_comment = hold
	return slurm.SUCCESS
end

-- Refuse with one line to the user, and count it for the governor's metrics (refusals by
-- reason). Recording is best effort: a refusal never waits on, or fails because of, its log.
local function refuse(conf, reason, account, job_desc, msg)
	log_user(msg)
	local f = io.open(conf.refusals_path, "a")
	if f then
		f:write(table.concat({ "refuse", string.format("%d", os.time()), reason, field(account),
			field(job_desc.user_id) }, "\t") .. "\n")
		f:close()
	end
	return slurm.ERROR
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local conf = read_hook_conf()
	local snap, snap_err = read_snapshot(conf.snapshot_path)

	local weights = snap and snap.weights or {}
	local default_weight = snap and snap.default_weight or 1.0
	local req, rerr = gpu_request(job_desc, weights, default_weight, snap and snap.sockets_per_node or 1)
	if not req then
		return refuse(conf, "bad_request", job_desc.account, job_desc, "slurmgov: " .. rerr)
	end
	if not req.any_gpu then return slurm.SUCCESS end

	local account = job_desc.account
	if account == nil or account == "" then account = job_desc.default_account end

	-- Never-placeable requests are refused whatever the budget says.
	if snap and snap.max_gpus_per_node then
		local cap = snap.max_gpus_per_node
		if req.per_node > cap then
			return refuse(conf, "never_placeable", account, job_desc, string.format(
				"slurmgov: job asks for %d GPUs on one node but no node has more than %d; it can never start",
				req.per_node, cap))
		end
		if req.max_nodes and req.gpus > cap * req.max_nodes then
			return refuse(conf, "never_placeable", account, job_desc, string.format(
				"slurmgov: job asks for %d GPUs on at most %d node(s) of %d GPUs each; it can never start",
				req.gpus, req.max_nodes, cap))
		end
	end
	if snap and snap.total_gpus and req.gpus > snap.total_gpus then
		return refuse(conf, "never_placeable", account, job_desc, string.format(
			"slurmgov: job asks for %d GPUs but the cluster has %d; it can never start", req.gpus, snap.total_gpus))
	end

	local tl, terr = time_limit_min(job_desc, part_list, snap and snap.default_time_min or conf.default_time_min)
	if not tl then
		return refuse(conf, "bad_time", account, job_desc, "slurmgov: " .. terr)
	end
	local cost = req.weighted * req.tasks_in_array * tl * 60

	local who = "account " .. printable(account or "?") .. " uid " .. tostring(job_desc.user_id)
	local problem, policy = nil, nil
	if not snap then
		problem = "budget snapshot unreadable: " .. printable(snap_err)
		policy = conf.fail_policy
	else
		local age = os.time() - snap.written
		if age > snap.max_age_s then
			problem = string.format("budget snapshot is stale (written %d s ago, max %d s)", age, snap.max_age_s)
			policy = snap.fail_policy
		end
	end
	if problem then
		if policy == "open" then
			log_info("slurmgov: " .. problem .. "; admitting GPU job of " .. who .. " (fail_policy open)")
			return admit(job_desc, conf.journal_path, "0", account, cost, req, tl)
		end
		return refuse(conf, snap and "snapshot_stale" or "snapshot_unreadable", account, job_desc,
			"slurmgov: " .. problem .. "; GPU jobs are refused until it is refreshed (fail_policy closed)")
	end

	if account == nil or account == "" then
		return refuse(conf, "no_account", account, job_desc,
			"slurmgov: job has no account and the user has no default account; give --account")
	end
	local budget = snap.accounts[account] -- plain table lookup: no pattern matching on names
	if budget == nil then
		return refuse(conf, "no_budget", account, job_desc, string.format(
			"slurmgov: account %s has no GPU budget, job needs up to %s GPU-h", printable(account), fmt_gpuh(cost)))
	end
	local sums, jerr = charged_since(snap, conf.journal_path)
	if not sums then
		return refuse(conf, "journal_unreadable", account, job_desc,
			"slurmgov: cannot read the hold journal (" .. printable(jerr) .. "); job refused")
	end
	local available = budget - (sums[account] or 0)
	if cost > available then
		return refuse(conf, "over_budget", account, job_desc, string.format(
			"slurmgov: account %s: %s GPU-h left, job needs up to %s GPU-h",
			printable(account), fmt_gpuh(available), fmt_gpuh(cost)))
	end
	return admit(job_desc, conf.journal_path, snap.serial_str, account, cost, req, tl)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	-- Growing an admitted job after the fact would bypass the budget: only SlurmUser/root may.
	if modify_uid == 0 then return slurm.SUCCESS end
	local ac = job_rec and job_rec.admin_comment
	if not ac or not string.find(ac, "slurmgov:hold=", 1, true) then return slurm.SUCCESS end
	local arr = job_desc.array_inx
	if arr and string.match(arr, "^%%%d+$") then arr = nil end -- ArrayTaskThrottle only
	local grows = job_desc.tres_per_node or job_desc.tres_per_job or job_desc.tres_per_task
		or job_desc.tres_per_socket or arr
		or set_num(job_desc.min_nodes) or set_num(job_desc.max_nodes) or set_num(job_desc.num_tasks)
	local tl = job_desc.time_limit
	if tl ~= nil and tl ~= NO_VAL and (tl == INFINITE or tl == 0 or tl > (job_rec.time_limit or 0)) then
		grows = true
	end
	if grows then
		-- Slurm 22.05 discards log_user messages from job_modify: log for the admins instead.
		log_info(string.format("slurmgov: GPU budget hold of job %s is fixed: uid %s may not grow its GPUs, nodes, tasks or time; cancel and resubmit",
			tostring(job_rec.job_id), tostring(modify_uid)))
		return slurm.ERROR
	end
	return slurm.SUCCESS
end

return slurm.SUCCESS
