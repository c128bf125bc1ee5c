@echo off
rem Timbre on Windows.
rem   start.bat [--host H] [--port P] [--base-model DIR]   set up .venv, launch the app (http://127.0.0.1:7860)
rem   start.bat test [PYTEST ARGS]                           set up .venv with the test needs, run the test suite
setlocal
cd /d "%~dp0"
set MODE=app
if "%1"=="test" (
  set MODE=test
  shift
)
if not exist .venv\Scripts\python.exe (
  python -m venv .venv || exit /b 1
)
set REQ=requirements.txt
if "%MODE%"=="test" set REQ=requirements-test.txt
.venv\Scripts\python.exe -m pip install -r %REQ% || exit /b 1
rem Packages with wrong declared dependencies, without them (requirements-nodeps.txt says why).
.venv\Scripts\python.exe -m pip install --no-deps -r requirements-nodeps.txt || exit /b 1
if "%MODE%"=="test" (
  rem The tests also need espeak-ng, sox, ffmpeg and Chromium on PATH.
  .venv\Scripts\python.exe -m pytest %1 %2 %3 %4 %5 %6 %7 %8 %9
  exit /b %ERRORLEVEL%
)
.venv\Scripts\python.exe -m webui %1 %2 %3 %4 %5 %6 %7 %8 %9
