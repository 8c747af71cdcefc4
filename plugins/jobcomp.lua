--[[
slurmgov job-completion hook (Slurm jobcomp/lua, tested on Slurm 22.05, Lua 5.1).

Install next to slurm.conf with JobCompType=jobcomp/lua.  For every finished job that
carries a slurmgov hold token (AdminComment "slurmgov:hold=<token>", set by
job_submit.lua) or that was allocated GPUs, it appends one TAB-separated line to
slurmgov_settle.log in the same directory as this script:

  settle jobid token account gpus start end state gpu_type array restart_cnt cpus

The fields, and the field counts earlier versions wrote, are specified in
plugins/SNAPSHOT_FORMAT.md ("Settlement", "Versions"), the one specification; fields are
only ever added at the end.  Fields are sanitised of TAB/CR/LF.
No network, no sleeps, no process spawning; data never becomes a Lua pattern.
--]]

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

local SETTLE_PATH = script_dir() .. "/slurmgov_settle.log"

local NO_VAL = 4294967294

local STATES = {
	[0] = "PENDING", [1] = "RUNNING", [2] = "SUSPENDED", [3] = "COMPLETED", [4] = "CANCELLED",
	[5] = "FAILED", [6] = "TIMEOUT", [7] = "NODE_FAIL", [8] = "PREEMPTED", [9] = "BOOT_FAIL",
	[10] = "DEADLINE", [11] = "OUT_OF_MEMORY",
}

local function field(s)
	if s == nil then return "-" end
	s = string.gsub(tostring(s), "[\t\r\n]", " ")
	if s == "" then return "-" end
	return s
end

local function num(v)
	v = tonumber(v)
	if not v or v >= 4294967294 then return "0" end
	return string.format("%d", v)
end

local function state_name(v)
	local n = tonumber(v)
	if not n then return field(v) end
	-- Low byte is the base state; higher bits are flags such as COMPLETING.
	return STATES[n % 256] or string.format("%d", n)
end

function slurm_jobcomp_log_record(job)
	local ac = job.admin_comment
	local token = ac and string.match(ac, "slurmgov:hold=([^%s]+)")
	local alloc = job.tres_fmt_alloc_str
	local gpus, cpus = 0, 0
	if alloc then
		for item in string.gmatch(alloc, "[^,]+") do
			local n = string.match(item, "^gres/gpu=(%d+)$")
			if n then gpus = tonumber(n) end
			n = string.match(item, "^cpu=(%d+)$")
			if n then cpus = tonumber(n) end
		end
	end
	if not token and gpus == 0 then return slurm.SUCCESS end
	-- An array's own record while it still holds tasks that never started has no task id:
	-- once it ends (cancelled while pending) none of those tasks will run.
	local array = "-"
	local aj, at = tonumber(job.array_job_id), tonumber(job.array_task_id)
	if aj and aj > 0 then
		if at and at < NO_VAL then
			array = string.format("%d_%d", aj, at)
		else
			array = string.format("%d_*", aj)
		end
	end
	local line = table.concat({
		"settle", num(job.job_id), field(token), field(job.account), string.format("%d", gpus),
		num(job.start_time), num(job.end_time), state_name(job.job_state), "-", array,
		num(job.restart_cnt), string.format("%d", cpus),
	}, "\t") .. "\n"
	-- "a+": writes go to the end; a half line left by a crash mid-append is ended first so
	-- that this settlement is not glued onto it (unparseable, hence lost).
	local f, err = io.open(SETTLE_PATH, "a+")
	if not f then
		slurm.log_error("%s", "slurmgov: cannot append to " .. SETTLE_PATH .. ": " .. tostring(err))
		return slurm.SUCCESS
	end
	local size = f:seek("end")
	if size and size > 0 and f:seek("set", size - 1) and f:read(1) ~= "\n" then
		line = "\n" .. line
	end
	f:seek("end") -- C stdio: a seek between reading and writing
	f:write(line)
	f:close()
	return slurm.SUCCESS
end

return slurm.SUCCESS
