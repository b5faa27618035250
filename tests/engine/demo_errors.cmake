# ctest host.demo_errors: the C++ host demo's bad-input table. Each row: arguments, the exit code, a fragment of
# its output; none may claim to have written a file. Run as cmake -DDEMO=<histream-host-demo> -DWORK=<dir> -P this.
file(MAKE_DIRECTORY ${WORK})
file(WRITE ${WORK}/a_file "")
set(small "--frames,9,--height,32,--width,32,--schedule,self_forcing")  # arguments are comma-separated in the rows
set(rows
  "help|0|usage: histream-host-demo|--help"
  "frames_suffix|2|--frames takes a positive integer, got '9x'|--frames,9x"
  "frames_space|2|--frames takes a positive integer, got ' 9'|--frames, 9"
  "height_negative|2|--height takes a positive integer, got '-32'|--height,-32"
  "width_overflow|2|--width takes a positive integer|--width,99999999999999999999"
  "seed_negative|2|--seed takes an integer in|--seed,-1"
  "missing_value|2|missing value after --out|--out"
  "unknown_flag|2|unknown argument --bogus|--bogus,1"
  "frames_form|2|num_frames must be a positive integer of the form 4k+1|--frames,8,--height,32,--width,32"
  "raw_no_folder|1|No such file or directory|${small},--out,${WORK}/nonexist/h.rgb"
  "raw_directory|1|Is a directory|${small},--out,${WORK}"
  "raw_under_file|1|cannot open|${small},--out,${WORK}/a_file/h.rgb"
  "mp4_under_file|2|is a file, not a folder|${small},--out,${WORK}/a_file/h.mp4"
)
set(failures "")
foreach(row IN LISTS rows)
  string(REPLACE "|" ";" parts "${row}")
  list(GET parts 0 name)
  list(GET parts 1 want_rc)
  list(GET parts 2 fragment)
  string(FIND "${row}" "|" p0)
  string(SUBSTRING "${row}" ${p0} -1 rest)
  string(REGEX REPLACE "^\\|[^|]*\\|[^|]*\\|" "" args "${rest}")
  string(REPLACE "," ";" args "${args}")
  execute_process(COMMAND ${DEMO} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  set(all "${out}${err}")
  string(FIND "${all}" "${fragment}" at)
  string(FIND "${all}" "wrote " wrote)
  if(NOT rc STREQUAL want_rc OR at EQUAL -1 OR (NOT want_rc STREQUAL "0" AND NOT wrote EQUAL -1))
    string(APPEND failures "\n${name}: exit ${rc} (want ${want_rc}), want '${fragment}' in:\n${all}")
  endif()
endforeach()
if(failures)
  message(FATAL_ERROR "host demo error table:${failures}")
endif()
